"""Draw the benchmark JSON files under docs/bench/ as pictures next to them.

python -m e2e.plot_benchmarks   (needs matplotlib: pip install 'llm-extproc[dashboard]')

overhead.png (req/s and p50 per setup and concurrency), routing.png (P99 TTFT and goodput per
router and load), pick.png (decision CPU time vs endpoints), scale.png (P99 TTFT per router and
fleet size). Each picture only redraws numbers a benchmark wrote; nothing is measured here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"


def _load(name: str) -> dict[str, Any] | None:
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    overhead = _load("overhead")
    if overhead:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for prompt, ax in zip((200, 204800), axes, strict=True):
            series: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for row in overhead["results"]:
                if row["prompt_bytes"] == prompt:
                    series[row["setup"]].append((row["concurrency"], row["rps"]))
            for setup, points in series.items():
                ax.plot([c for c, _ in points], [r for _, r in points], marker="o", label=setup)
            ax.set_xscale("log", base=2)
            ax.set_title(f"req/s, {'200 B' if prompt == 200 else '200 KB'} prompts")
            ax.set_xlabel("concurrency")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(BENCH / "overhead.png", dpi=90)
        written.append("overhead.png")
    routing = _load("routing")
    if routing:
        # One group of bars per scenario: the median of the repeats, whiskers min-max; an
        # infinite P99 (failed requests in the tail) is drawn at the top of the axis.
        def value(x: Any) -> float:
            return float("inf") if x == "inf" else float(x)

        scenarios = list(dict.fromkeys(r["scenario"] for r in routing["results"]))
        routers = list(dict.fromkeys(r["router"] for r in routing["results"]))
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        width = 0.8 / max(1, len(routers))
        for i, router in enumerate(routers):
            for ax, key in ((axes[0], "ttft_p99_s"), (axes[1], "goodput_rps")):
                xs, ys, low, high = [], [], [], []
                for j, scenario in enumerate(scenarios):
                    row = next(
                        (
                            r
                            for r in routing["results"]
                            if r["router"] == router and r["scenario"] == scenario
                        ),
                        None,
                    )
                    if row is None:
                        continue
                    top = 60.0 if key == "ttft_p99_s" else float("inf")
                    y = min(value(row[key]), top)
                    xs.append(j + i * width)
                    ys.append(y)
                    low.append(max(0.0, y - min(value(row[key + "_min"]), top)))
                    high.append(max(0.0, min(value(row[key + "_max"]), top) - y))
                ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=router)
        axes[0].set_yscale("log")
        axes[0].set_title("P99 time to first token (s; failures = inf, drawn at 60)")
        axes[1].set_title("goodput (req/s meeting the SLO)")
        for ax in axes:
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))], scenarios, fontsize=8)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(routers), fontsize=7)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(BENCH / "routing.png", dpi=90)
        written.append("routing.png")
    pick = _load("pick")
    if pick:
        rows = pick["results"]["pick"]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.plot([r["endpoints"] for r in rows], [r["p50_us"] for r in rows], marker="o", label="p50")
        ax.plot([r["endpoints"] for r in rows], [r["p99_us"] for r in rows], marker="o", label="p99")
        ax.axhline(50, linestyle="--", color="grey", label="target at 1,000 endpoints")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("endpoints")
        ax.set_ylabel("µs CPU per pick")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(BENCH / "pick.png", dpi=90)
        written.append("pick.png")
    scale = _load("scale")
    if scale:
        loads = sorted({r["load"] for r in scale["results"]})
        fig, axes = plt.subplots(1, len(loads), figsize=(5.5 * len(loads), 3.8))
        for ax, load in zip(axes if len(loads) > 1 else [axes], loads, strict=True):
            series2: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for row in scale["results"]:
                if row["load"] == load:
                    series2[row["router"]].append((row["endpoints"], row["ttft_p99_s"]))
            for router, points in series2.items():
                ax.plot([n for n, _ in points], [t for _, t in points], marker="o", label=router)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"P99 TTFT (s), load {load}")
            ax.set_xlabel("GPUs (simulated)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(BENCH / "scale.png", dpi=90)
        written.append("scale.png")
    print("wrote " + ", ".join(f"docs/bench/{name}" for name in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
