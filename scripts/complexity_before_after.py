"""Both complexity heads, before and after a change to the scorer, timed in one process.

    git archive 4763ead extproc/complexity | tar -x -C /tmp/cxbefore   # the code before (main)
    (move it to /tmp/cxbefore/cxbefore/complexity, add cxbefore/__init__.py, rewrite its imports
    `extproc.complexity` -> `cxbefore.complexity`)
    .venv/bin/python scripts/complexity_before_after.py --before /tmp/cxbefore --repeats 7

2 KB prompts as `llm-extproc bench classifier` builds them; the two scorers and a frozen
strong_gain head (extproc.bench.previous_gain, a yardstick) are interleaved prompt by prompt, the order turning
from prompt to prompt, so all see the same machine load and none always runs on the caches
another left. Writes docs/bench/complexity_before_after.json.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from extproc import complexity
from extproc.bench.complexity import two_kb_prompts
from extproc.bench.machine import write_report
from extproc.bench.previous_gain import PreviousStrongGain
from extproc.complexity.evaluate import read_labelled
from extproc.complexity.features import Prompt
from extproc.complexity.lexical import LexicalModel
from extproc.complexity.train import DEFAULT_ROUTING, GRADED_TRAIN, labelled_rows, read_rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="directory holding the cxbefore package")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default="docs/bench/complexity_before_after.json")
    args = parser.parse_args()
    sys.path.insert(0, args.before)
    before = importlib.import_module("cxbefore.complexity")
    before_prompt = importlib.import_module("cxbefore.complexity.features").Prompt
    old, new = before.model(), complexity.model()
    # the yardstick gets its own copy of the arrays: it warms neither scorer's caches
    previous = PreviousStrongGain(LexicalModel.load(complexity.MODEL_PATH, "gain."))
    scorers: list[tuple[str, Callable[[str], object]]] = [
        ("before", lambda t: old.scores(before_prompt.from_text(t))),
        ("after", lambda t: new.scores(Prompt.from_text(t))),
        ("yardstick_gain_head", previous),
    ]
    routing = [r["prompt"] for r in labelled_rows(read_labelled(DEFAULT_ROUTING))]
    chinese = [Prompt.from_row(r).final for r in read_rows(GRADED_TRAIN) if r.get("lang") == "zh"]
    results: dict[str, Any] = {}
    for name, texts in (("english", routing), ("chinese", chinese)):
        prompts = two_kb_prompts(texts, 1000)
        samples: dict[str, list[float]] = {k: [] for k, _ in scorers}
        per_repeat: dict[str, list[float]] = {k: [] for k, _ in scorers}
        for _ in range(args.repeats):
            run: dict[str, list[float]] = {k: [] for k, _ in scorers}
            for i, text in enumerate(prompts):
                turn = i % len(scorers)
                for key, score in scorers[turn:] + scorers[:turn]:
                    started = time.perf_counter_ns()
                    score(text)
                    run[key].append((time.perf_counter_ns() - started) / 1000)
            for key, values in run.items():
                samples[key] += values
                per_repeat[key].append(statistics.median(values))
        result: dict[str, Any] = {
            key: {
                "p50_us": statistics.median(values),
                "p99_us": sorted(values)[int(len(values) * 0.99)],
                "p50_us_per_repeat": per_repeat[key],
            }
            for key, values in samples.items()
        }
        p50 = {key: result[key]["p50_us"] for key, _ in scorers}
        result["after_to_before"] = p50["after"] / p50["before"]
        result["after_to_before_per_repeat"] = [
            a / b for a, b in zip(per_repeat["after"], per_repeat["before"], strict=True)
        ]
        result["before_to_yardstick_gain_head"] = p50["before"] / p50["yardstick_gain_head"]
        result["after_to_yardstick_gain_head"] = p50["after"] / p50["yardstick_gain_head"]
        results[name] = result
        print(
            f"{name}: before {p50['before']:.1f} µs (p99 {result['before']['p99_us']:.0f}), after "
            f"{p50['after']:.1f} µs (p99 {result['after']['p99_us']:.0f}), after/before "
            f"{result['after_to_before']:.3f} (per repeat "
            f"{', '.join(f'{r:.3f}' for r in result['after_to_before_per_repeat'])}); the frozen strong_gain head "
            f"{p50['yardstick_gain_head']:.1f} µs: before {result['before_to_yardstick_gain_head']:.2f}x, after "
            f"{result['after_to_yardstick_gain_head']:.2f}x"
        )
    write_report(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
