"""Render the Grafana dashboard's panels to a picture, from a real run of the local stack.

python -m e2e.render_dashboard [--seconds 90] [--out docs/dashboard.png]

Starts the local stack (real Envoy, llm-extproc with policies/local-stack.yaml, the simulated
fleet), a real Prometheus (Debian's `prometheus` package) scraping llm-extproc every second,
and a bounded mixed load (tenants of every tier, half streamed, some invalid requests, a burst
that saturates the fleet). Then every panel query of e2e/compose/grafana/dashboards/
llm-extproc.json is evaluated by Prometheus over the run and drawn with matplotlib, one subplot
per panel, so readers see what the dashboard shows without running Grafana.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from extproc.bench.overhead import free_port
from extproc.deploy import LOCAL_STACK_POLICY
from extproc.devstack.stack import LocalStack, StackConfig

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "e2e" / "compose" / "grafana" / "dashboards" / "llm-extproc.json"
TENANTS = ("acme", "startup", "nightly-jobs", "someone")


async def load(url: str, seconds: float) -> int:
    sent = 0
    deadline = time.monotonic() + seconds
    burst_at = time.monotonic() + seconds * 0.6
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            body: dict[str, Any] = {
                "model": random.choice(["llama-3-8b", "llama-3-8b", "gpt-4"]),
                "messages": [
                    {"role": "user", "content": f"question {i % 40}: " + "explain step by step " * (i % 7)}
                ],
                "max_tokens": random.choice([16, 32, 64]),
                "stream": i % 2 == 0,
            }
            if i % 25 == 0:
                body["model"] = "no-such-model"
            headers = {"x-tenant-id": random.choice(TENANTS), "content-type": "application/json"}
            try:
                async with session.post(url, json=body, headers=headers) as reply:
                    await reply.read()
            except aiohttp.ClientError:
                pass

        tasks = []
        while time.monotonic() < deadline:
            rate = 60.0 if burst_at < time.monotonic() < burst_at + seconds * 0.15 else 12.0
            tasks.append(asyncio.ensure_future(one(sent)))
            sent += 1
            await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*tasks)
    return sent


def query_range(base: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as reply:
        result: list[dict[str, Any]] = json.loads(reply.read())["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def draw(
    panels: list[dict[str, Any]],
    series: list[list[tuple[str, list[tuple[float, float]]]]],
    start: float,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 3.2))
    for ax, panel, lines in zip(axes.flat, panels, series, strict=False):
        for name, points in lines:
            if points:
                ax.plot([t - start for t, _ in points], [v for _, v in points], label=name, linewidth=1.2)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_ylabel(unit, fontsize=8)
        if lines:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(
                0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes, fontsize=8
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("llm-extproc dashboard (local stack, simulated fleet, mixed load with a burst)", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.render_dashboard", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--out", default="docs/dashboard.png")
    args = parser.parse_args(argv)
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("prometheus is not installed: apt-get install prometheus", flush=True)
        return 2
    dashboard = json.loads(DASHBOARD.read_text())
    with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
        metrics_port, prom_port = free_port(), free_port()
        local = LocalStack(
            StackConfig.on_free_ports(
                metrics_port=metrics_port,
                time_scale=0.2,
                policy=str(LOCAL_STACK_POLICY),
            )
        ).start()
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            f"scrape_configs: [{{job_name: llm-extproc, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}]\n"
        )
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{prom_port}"
        try:
            time.sleep(3)
            start = time.time()
            sent = asyncio.run(
                load(f"http://127.0.0.1:{local.listen_port}/v1/chat/completions", args.seconds)
            )
            time.sleep(3)
            end = time.time()
            series = []
            for panel in dashboard["panels"]:
                lines = []
                for target in panel["targets"]:
                    for result in query_range(base, target["expr"], start, end):
                        points = [
                            (float(t), float(v))
                            for t, v in result["values"]
                            if v not in ("NaN", "+Inf", "-Inf")
                        ]
                        lines.append((legend(target.get("legendFormat", ""), result["metric"]), points))
                series.append(lines)
        finally:
            prom.terminate()
            prom.wait(30)
            local.stop()
    draw(dashboard["panels"], series, start, Path(args.out))
    print(
        f"{sent} requests over {args.seconds:.0f} s; {sum(1 for s in series if s)} of {len(series)} panels have data; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
