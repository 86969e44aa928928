"""Routing quality on a heterogeneous simulated fleet driven by a real arrival trace.

python -m extproc.bench.routing [--trace FILE] [--load 0.85] [--duration 40] [--json docs/bench/routing.json]

Every router gets a fresh simulated fleet with the same parameters (2 A100-class + 2 T4-class
endpoints, docs/simulator.md) and the same replay of the trace (same synthetic prompts: a
share of shared system prompts and of sessions). Compared: plain Envoy round_robin,
least_request and random; vLLM's router (power_of_two, cache_aware) when installed; llm-extproc,
and llm-extproc-wasm (the same stack on the Wasm data path) when asked for with --routers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from string import Template
from typing import Any

from extproc.bench.machine import command, machine
from extproc.bench.overhead import Bench, wait_http
from extproc.deploy.envoy_config import ENVOY_DIR, lb_endpoints
from extproc.devstack.loadgen import DEFAULT_TRACE, Workload, read_trace, run_load
from extproc.devstack.stack import LocalStack, StackConfig, free_port

TIME_SCALE = 0.2  # simulated seconds run 5x faster; reported latencies are wall-clock
# Trace speed-up giving ~100 % of this fleet's capacity at TIME_SCALE: the fleet peaked at ~10,500
# output tokens/s when overloaded, ~59 req/s of this trace's mix (mean 177 output tokens after
# the 256 cap), ~12x the trace's own rate (4.8 req/s over its first 3,000 requests).
FULL_LOAD_SPEEDUP = 12.0


def start_sim(bench: Bench, work: Path) -> list[dict[str, Any]]:
    ready = work / "fleet.json"
    ready.unlink(missing_ok=True)
    bench.spawn(
        "sim",
        [
            sys.executable,
            "-m",
            "extproc.devstack.sim",
            "--endpoints",
            "4",
            "--time-scale",
            str(TIME_SCALE),
            "--ready-file",
            str(ready),
        ],
    )
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    endpoints: list[dict[str, Any]] = json.loads(ready.read_text())["endpoints"]
    return endpoints


def prefix_hit_rate(fleet: list[dict[str, Any]]) -> float:
    """Share of prompt tokens the simulated servers found in their prefix cache (their records)."""
    hit = total = 0
    for endpoint in fleet:
        with urllib.request.urlopen(f"http://{endpoint['address']}/sim/stats", timeout=10) as reply:
            for record in json.loads(reply.read())["records"]:
                hit += int(record["prefix_hit_tokens"])
                total += int(record["prompt_tokens"])
    return hit / total if total else 0.0


def run_router(
    name: str, trace: list[Any], args: argparse.Namespace, load: float, work: Path
) -> dict[str, Any]:
    workload = Workload(
        stream=True, shared_prefix_share=0.5, session_share=0.3, max_prompt_tokens=4096, max_output_tokens=256
    )
    speedup = FULL_LOAD_SPEEDUP * load
    bench = Bench(work)
    stack: LocalStack | None = None
    try:
        if name in ("llm-extproc", "llm-extproc-wasm"):
            stack = LocalStack(
                StackConfig.on_free_ports(
                    sim_endpoints=4,
                    time_scale=TIME_SCALE,
                    log_dir=str(work / "stack"),
                    # The Wasm data path: the filter decides from the brain's snapshot (docs/wasm.md).
                    data_path="wasm" if name == "llm-extproc-wasm" else "extproc",
                )
            )
            stack.start()
            base = stack.base_url
            fleet = stack.fleet
        else:
            fleet = start_sim(bench, work)
            port = free_port()
            addresses = [e["address"] for e in fleet]
            if name.startswith("vllm-router:"):
                router = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
                bench.spawn(
                    "router",
                    [
                        router,
                        "--port",
                        str(port),
                        "--worker-urls",
                        *[f"http://{a}" for a in addresses],
                        "--policy",
                        name.split(":", 1)[1],
                        "--log-level",
                        "error",
                    ],
                )
                wait_http(f"http://127.0.0.1:{port}/health", 30)
            else:
                policy = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}[
                    name
                ]
                bench.envoy(
                    "envoy",
                    Template((ENVOY_DIR / "bench-plain.yaml").read_text()).substitute(
                        admin_port=free_port(),
                        listen_port=port,
                        lb_policy=policy,
                        lb_endpoints=lb_endpoints(addresses),
                    ),
                )
                wait_http(f"http://{addresses[0]}/health")
                time.sleep(1.0)
            base = f"http://127.0.0.1:{port}/v1"
        result = asyncio.run(
            run_load(
                base,
                trace,
                workload,
                speedup=speedup,
                max_requests=args.max_requests,
                duration_s=args.duration,
                timeout_s=120,
            )
        )
        summary = result.summary(ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo)
        served: dict[str, int] = {}
        for r in result.results:
            served[r.served_by] = served.get(r.served_by, 0) + 1
        gpu = {e["address"]: e["gpu_class"] for e in fleet}
        fast_share = sum(n for a, n in served.items() if gpu.get(a) == "a100") / max(1, len(result.results))
        return {
            "router": name,
            "load": load,
            **summary,
            "a100_share": fast_share,
            "prefix_cache_hit_rate": prefix_hit_rate(fleet),
        }
    finally:
        if stack is not None:
            stack.stop()
        bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.routing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--trace", default=str(DEFAULT_TRACE))
    parser.add_argument("--load", default="0.85", help="share(s) of the fleet's capacity, comma-separated")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of replay per router")
    parser.add_argument("--max-requests", type=int, default=1500)
    parser.add_argument("--ttft-slo", type=float, default=1.0, help="seconds (wall clock)")
    parser.add_argument("--tpot-slo", type=float, default=0.05, help="seconds per output token (wall clock)")
    parser.add_argument(
        "--routers",
        default="round_robin,least_request,random,vllm-router:power_of_two,"
        "vllm-router:cache_aware,llm-extproc",
    )
    parser.add_argument("--json", default="docs/bench/routing.json")
    args = parser.parse_args(argv)
    trace = read_trace(Path(args.trace), limit=args.max_requests)
    has_vllm_router = bool(
        shutil.which("vllm-router") or (Path(sys.executable).parent / "vllm-router").exists()
    )
    rows = []
    print(
        f"{'router':<26} {'load':>5} {'reqs':>5} {'err':>4} {'ttft p50':>9} {'ttft p99':>9} {'e2e p99':>8} "
        f"{'tok/s':>8} {'goodput':>8} {'a100':>5} {'prefix':>6}"
    )
    runs = [(float(load), name) for load in args.load.split(",") for name in args.routers.split(",")]
    for load, name in runs:
        if name.startswith("vllm-router") and not has_vllm_router:
            print(f"{name:<26} skipped: vllm-router is not installed (pip install vllm-router)")
            continue
        with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
            row = run_router(name, trace, args, load, Path(tmp))
        rows.append(row)
        print(
            f"{name:<26} {row['load']:>5.2f} {row['requests']:>5} {row['errors']:>4} {row['ttft_p50_s']:>9.3f} "
            f"{row['ttft_p99_s']:>9.3f} {row['e2e_p99_s']:>8.2f} {row['output_tokens_per_s']:>8.0f} "
            f"{row['goodput_rps']:>8.2f} {row['a100_share']:>5.2f} {row['prefix_cache_hit_rate']:>6.2f}",
            flush=True,
        )
    Path(args.json).write_text(
        json.dumps(
            {
                "command": command(),
                "machine": machine(),
                "trace": args.trace,
                "time_scale": TIME_SCALE,
                "results": rows,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
