# ruff: noqa: RUF001  (Chinese prompts: full-width punctuation is intended)
"""Writes tests/complexity/data/expected_scores.jsonl: both scores of the shipped model on a fixed
sample of prompts, as the numpy reference scorer computes them (first written at commit 722859b,
before the request path was made faster; strong_gain rewritten when its head gained the trees, the
complexity values unchanged to the bit). test_scores_unchanged checks the scorer still gives them.

python -m tests.complexity.expected_scores [--routing ../shared/data/routing/dev.jsonl]

Rows: every graded train/test row (by id), every 25th routing prompt (with its text: the routing
file is not part of the project), 2 KB prompts stitched as the benchmark stitches them, and edge
cases (empty, huge, mixed scripts, lone surrogates, conversations with system prompts).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from extproc.bench.complexity import two_kb_prompts
from extproc.complexity.evaluate import read_labelled
from extproc.complexity.features import Prompt
from extproc.complexity.scorer import ComplexityModel
from extproc.complexity.train import DEFAULT_ROUTING, GRADED_TEST, GRADED_TRAIN, labelled_rows, read_rows

FIXTURE = Path(__file__).with_name("data") / "expected_scores.jsonl"

EDGE_CASES: list[dict[str, Any]] = [
    {"prompt": ""},
    {"prompt": " "},
    {"prompt": "\n\n"},
    {"prompt": "hi"},
    {"prompt": "你好"},
    {"prompt": "?" * 50},
    {"prompt": "Prove that there are infinitely many primes. " * 400},
    {"prompt": "证明：对任意正整数n，n^5 - n 能被30整除。" * 300},
    {"prompt": "naïve café — résumé ≤ ∑ x² " * 40},
    {"prompt": "lone surrogate \ud800 and \udfff inside, emoji 🚀🚀 and ∫ f(x) dx"},
    {"prompt": "Write a 2,000-word essay, then a 3-page summary and 12 lines of code:\n```py\nx = 1\n```"},
    {"prompt": "1. first\n2. second\n- third\n* fourth\n• fifth\n\nSELECT * FROM t GROUP BY a;"},
    {"prompt": "\\frac{a}{b} + \\sqrt{2} = \\int_0^1 x^2 dx " * 30},
    {"prompt": "a" * 10_000},
    {"prompt": "word " * 3000},
    {
        "messages": [
            {"role": "system", "content": "You are a careful assistant. " * 50},
            {"role": "user", "content": "Design a sharded key-value store."},
            {"role": "assistant", "content": "Here is a first sketch of the design. " * 20},
            {"role": "user", "content": "Now prove that your replication scheme is linearizable."},
        ]
    },
    {
        "messages": [
            {"role": "developer", "content": "只用中文回答。"},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你？"},
            {"role": "user", "content": "用动态规划求最长公共子序列，并分析时间复杂度。"},
        ]
    },
    {"messages": [{"role": "assistant", "content": "Only an assistant message here."}]},
]


def chinese_2kb_prompts() -> list[str]:
    chinese = [Prompt.from_row(r).final for r in read_rows(GRADED_TRAIN) if r.get("lang") == "zh"]
    return two_kb_prompts(chinese, 40)


@functools.cache
def numpy_reference() -> ComplexityModel:
    return ComplexityModel.load(native=False)


def expected(prompt: Prompt) -> dict[str, float]:
    scores = numpy_reference().scores(prompt)
    return {"complexity": scores.complexity, "strong_gain": scores.strong_gain}


def rows(routing: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, path in (("graded_train", GRADED_TRAIN), ("graded_test", GRADED_TEST)):
        out += [{"set": name, "id": r["id"], **expected(Prompt.from_row(r))} for r in read_rows(path)]
    routing_prompts = [r["prompt"] for r in labelled_rows(read_labelled(routing))]
    for prompt in routing_prompts[::25]:
        out.append({"set": "routing", "prompt": prompt, **expected(Prompt.from_text(prompt))})
    for prompt in two_kb_prompts(routing_prompts, 40):
        out.append({"set": "2kb", "prompt": prompt, **expected(Prompt.from_text(prompt))})
    # these two are rebuilt from the project's files by the test: only their index is stored
    for i, prompt in enumerate(chinese_2kb_prompts()):
        out.append({"set": "2kb_zh", "index": i, **expected(Prompt.from_text(prompt))})
    for i, case in enumerate(EDGE_CASES):
        out.append({"set": "edge", "index": i, **expected(Prompt.from_row(case))})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routing", type=Path, default=DEFAULT_ROUTING)
    args = parser.parse_args(argv)
    FIXTURE.parent.mkdir(exist_ok=True)
    lines = [json.dumps(row) for row in rows(args.routing)]
    FIXTURE.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} rows → {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
