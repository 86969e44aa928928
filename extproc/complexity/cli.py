"""`llm-extproc complexity`: score prompts in batch, evaluate on graded or labelled data, explain a score."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extproc import complexity
from extproc.complexity.evaluate import apgr, graded_report
from extproc.complexity.features import Prompt
from extproc.complexity.scorer import ComplexityModel, Explanation, score_to_level


def prompt_of(record: dict[str, Any]) -> Prompt:
    """A JSON line's prompt: `messages` (chat, scored as the request path does) or `prompt` text."""
    messages = record.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise ValueError("'messages' must be an array")
        return Prompt.from_messages(messages)
    prompt = record.get("prompt", "")
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string")
    return Prompt.from_text(prompt)


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    return {
        "complexity": explanation.complexity,
        "strong_gain": explanation.strong_gain,
        "level": explanation.level,
        "features": [
            {"name": n, "value": words, "contribution": v}
            for (n, v), words in zip(explanation.features, explanation.phrases, strict=True)
        ],
        "baseline": explanation.baseline,
        "strong_gain_features": [{"name": n, "contribution": v} for n, v in explanation.gain_features],
    }


def print_explanation(explanation: Explanation) -> None:
    print(
        f"complexity  {explanation.complexity:.3f}  (level {explanation.level:.2f} → band "
        f"{score_to_level(explanation.complexity)})"
    )
    print(f"  {explanation.baseline:+.3f}  average prompt")
    for (_, value), words in zip(explanation.features, explanation.phrases, strict=True):
        print(f"  {value:+.3f}  {words}")
    print(f"strong_gain {explanation.strong_gain:.3f}")
    for name, value in explanation.gain_features:
        print(f"  {value:+.3f}  {name}")


def evaluate(model: ComplexityModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman for graded rows, APGR for labelled rows (a file may hold both kinds)."""
    started = time.perf_counter()
    scored = [model.scores(prompt_of(r)) for r in rows]
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"rows": len(rows), "us_per_prompt": elapsed / max(len(rows), 1) * 1e6}
    graded = [i for i, r in enumerate(rows) if isinstance(r.get("level"), int)]
    if graded:
        result["graded"] = graded_report(
            [scored[i].complexity for i in graded],
            [rows[i]["level"] for i in graded],
            [str(rows[i].get("lang", "")) for i in graded],
        )
    labelled = [i for i, r in enumerate(rows) if "weak_correct" in r and "strong_correct" in r]
    if labelled:
        weak = [bool(rows[i]["weak_correct"]) for i in labelled]
        strong = [bool(rows[i]["strong_correct"]) for i in labelled]
        result["labelled"] = {
            "rows": len(labelled),
            "strong_gain": apgr([scored[i].strong_gain for i in labelled], weak, strong),
            "complexity": apgr([scored[i].complexity for i in labelled], weak, strong),
        }
    return result


def print_evaluation(result: dict[str, Any]) -> None:
    print(f"{result['rows']} rows, {result['us_per_prompt']:.1f} µs per prompt")
    graded = result.get("graded")
    if graded:
        print(f"graded rows {graded['rows']}: Spearman(complexity, level) {graded['spearman']:.3f}")
        for lang, values in graded["spearman_by_language"].items():
            print(f"  {lang or '?':4} {values['rows']:5} rows  Spearman {values['spearman']:.3f}")
        medians = "  ".join(f"{level}: {value:.3f}" for level, value in graded["median_by_level"].items())
        print(f"  median complexity by level  {medians}  (monotone: {graded['medians_monotone']})")
    labelled = result.get("labelled")
    if labelled:
        print(f"labelled rows {labelled['rows']}:")
        for head in ("strong_gain", "complexity"):
            values = labelled[head]
            print(
                f"  {head:12} APGR {values['apgr']:.3f}; strong share for 50 % of the gap "
                f"{values['strong_share_for_50pct_gap']:.2f}, for 80 % {values['strong_share_for_80pct_gap']:.2f}"
            )
    if not graded and not labelled:
        print("no rows with 'level' or with 'weak_correct'/'strong_correct'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-extproc complexity",
        description="Without options: read JSON lines with a 'prompt' (or chat 'messages') on stdin and "
        "write each back, in order, with 'complexity' and 'strong_gain' (both in [0, 1]).",
    )
    parser.add_argument(
        "--eval",
        metavar="FILE.jsonl",
        help="graded rows (level 1-5: Spearman, per language) and/or labelled rows "
        "(weak_correct, strong_correct: APGR and strong-call shares)",
    )
    parser.add_argument(
        "--explain", metavar="TEXT", help="show both scores and their top features ('-' reads stdin)"
    )
    parser.add_argument("--top", type=int, default=6, help="features shown by --explain")
    parser.add_argument("--json", action="store_true", help="machine-readable output for --eval/--explain")
    args = parser.parse_args(argv)
    model = complexity.model()
    if args.explain is not None:
        text = sys.stdin.read() if args.explain == "-" else args.explain
        explanation = model.explain(Prompt.from_text(text), args.top)
        if args.json:
            print(json.dumps(explanation_json(explanation), ensure_ascii=False))
        else:
            print_explanation(explanation)
        return 0
    if args.eval:
        with Path(args.eval).open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        result = evaluate(model, rows)
        if args.json:
            print(json.dumps(result))
        else:
            print_evaluation(result)
        return 0
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("each line must be a JSON object")
            scores = model.scores(prompt_of(record))
            record["complexity"] = round(scores.complexity, 6)
            record["strong_gain"] = round(scores.strong_gain, 6)
        except ValueError as error:
            record = {"error": str(error)}
        out.write(json_line(record))
    return 0


def json_line(record: dict[str, Any]) -> str:
    """UTF-8 JSON, with \\u escapes only where the input had text UTF-8 cannot carry (lone surrogates)."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
