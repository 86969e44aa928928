"""Targeted parser vs prometheus-client's parser, in microseconds per page.

python -m extproc.bench.promparse            # prints a table, writes docs/bench/promparse.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from importlib import resources

from prometheus_client.parser import text_string_to_metric_families

from extproc.bench.machine import write_report
from extproc.collectors.promparse import PRESETS, TargetedParser

SAMPLES = resources.files("extproc.bench") / "data"
PAGES = {
    "vllm_metrics_two_engines.txt": "vllm",
    "vllm_metrics_edge.txt": "vllm",
    "sglang_metrics.txt": "sglang",
    "tgi_metrics.txt": "tgi",
}


def per_call_us(fn: Callable[[], object], budget_s: float = 0.5) -> float:
    """Median of 5 timed batches, each sized to take about budget_s / 5."""
    fn()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < budget_s / 25:
        fn()
        calls += 1
    batch = max(1, calls * 5)
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m extproc.bench.promparse", description=__doc__.splitlines()[0]
    )
    cli.add_argument("--json", default="docs/bench/promparse.json")
    cli.add_argument("--budget", type=float, default=0.5, help="seconds of timing per parser and page")
    args = cli.parse_args(argv)
    results = []
    for name, preset in PAGES.items():
        text = (SAMPLES / name).read_text()
        parser = TargetedParser(PRESETS[preset])
        targeted = per_call_us(lambda p=parser, t=text: p.parse(t), args.budget)  # type: ignore[misc]
        reference = per_call_us(lambda t=text: list(text_string_to_metric_families(t)), args.budget)  # type: ignore[misc]
        results.append(
            {
                "page": name,
                "lines": len(text.splitlines()),
                "bytes": len(text.encode()),
                "targeted_us": round(targeted, 1),
                "prometheus_client_us": round(reference, 1),
                "speedup": round(reference / targeted, 1),
            }
        )
        print(
            f"{name:32} {results[-1]['lines']:4} lines  targeted {targeted:8.1f} us  "
            f"prometheus_client {reference:8.1f} us  x{reference / targeted:.1f}"
        )
    if args.json:
        write_report(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
