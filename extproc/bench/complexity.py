"""Complexity scorer speed (µs per 2 KB prompt, one core, in-process) and cross-validated quality.

python -m extproc.bench.complexity [--json docs/bench/complexity.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from extproc import complexity
from extproc.bench.machine import command, machine
from extproc.complexity.evaluate import read_labelled
from extproc.complexity.train import DEFAULT_DATA, cross_validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.complexity", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--json", default="docs/bench/complexity.json")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    rows = read_labelled(Path(args.data))
    model = complexity.model()
    prompts: list[str] = []
    for r in rows:
        text = r["prompt"]
        while len(text) < 2048:
            text += "\n" + rows[len(prompts) * 7 % len(rows)]["prompt"]
        prompts.append(text[:2048])
    samples = []
    for text in prompts[:3000]:
        started = time.perf_counter_ns()
        model.score(text)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    speed = {
        "prompt_bytes": 2048,
        "p50_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99)],
    }
    quality, _ = cross_validate(rows, k=5)
    print(f"2 KB prompt: median {speed['p50_us']:.1f} µs, p99 {speed['p99_us']:.1f} µs")
    print(
        f"5-fold CV APGR {quality['apgr']:.3f}; strong share for 50 % of the gap {quality['strong_share_for_50pct_gap']:.2f}, "
        f"80 % {quality['strong_share_for_80pct_gap']:.2f}; cost saved at 95 % strong quality "
        f"{quality['cost_saved_at_95pct_strong_quality']:.2f}"
    )
    Path(args.json).write_text(
        json.dumps(
            {"command": command(), "machine": machine(), "results": {"speed": speed, "cv": quality}}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
