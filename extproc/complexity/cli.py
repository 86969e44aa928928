"""`llm-extproc complexity`: score prompts in batch, evaluate on labelled data, explain one score."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from extproc import complexity
from extproc.complexity.evaluate import apgr, read_labelled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-extproc complexity",
        description="Without options: read JSON lines with a 'prompt' field on stdin, write them back with 'complexity'.",
    )
    parser.add_argument(
        "--eval", metavar="FILE.jsonl", help="labelled prompts (prompt, weak_correct, strong_correct)"
    )
    parser.add_argument(
        "--explain", metavar="TEXT", help="show the score and its top features ('-' reads stdin)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output for --eval/--explain")
    args = parser.parse_args(argv)
    model = complexity.model()
    if args.explain is not None:
        text = sys.stdin.read() if args.explain == "-" else args.explain
        explanation = model.explain(text)
        if args.json:
            print(
                json.dumps(
                    {
                        "complexity": explanation.score,
                        "raw": explanation.raw,
                        "features": explanation.features,
                    }
                )
            )
        else:
            print(f"complexity {explanation.score:.3f} (raw {explanation.raw:+.3f})")
            for name, value in explanation.features:
                print(f"  {value:+.3f}  {name}")
        return 0
    if args.eval:
        rows = read_labelled(Path(args.eval))
        started = time.perf_counter()
        scores = [model.score(r["prompt"]) for r in rows]
        elapsed = time.perf_counter() - started
        result = apgr(scores, [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows])
        result["prompts"] = len(rows)
        result["prompts_per_s"] = len(rows) / elapsed
        result["us_per_prompt"] = elapsed / len(rows) * 1e6
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:36} {value:.4g}")
        return 0
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("each line must be a JSON object")
            prompt = record.get("prompt", "")
            if not isinstance(prompt, str):
                raise ValueError("'prompt' must be a string")
            record["complexity"] = round(model.score(prompt), 6)
        except ValueError as error:
            record = {"error": str(error)}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
