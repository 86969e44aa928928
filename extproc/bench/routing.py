"""Routing quality on simulated fleets driven by a real arrival trace, against fair baselines.

llm-extproc bench routing [--scenario NAME|all] [--trace FILE] [--load 0.85] [--duration S]
                          [--repeats 3] [--json docs/bench/routing.json]

Every router gets a fresh simulated fleet (extproc.devstack.sim; per-class prefill and decode
rates from docs/simulator.md) and the same replay of the trace. The simulator does not share
the router's model: GPU classes differ unevenly at prefill and decode, prefix-cache blocks are
hashed the server's way, and llm-extproc runs with no GPU-class prior (it learns speeds).

Routers: Envoy round_robin, least_request, random, and least_request_weighted (least_request
with each endpoint's load_balancing_weight from its GPU class, as an engineer who knows the
fleet would configure it); vLLM's router (power_of_two polling each server's load endpoint,
cache_aware) when installed; llm-extproc; llm-extproc:prior (the ablation with the same GPU
weights as least_request_weighted, as a prior); llm-extproc-wasm (the same stack on the Wasm
data path) when asked for with --routers. Each cell is the median of the repeats, run
in shuffled order, with min-max. A failed request counts as an infinite TTFT and misses the
objective.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import Any

import aiohttp
import yaml

from extproc.bench.machine import command, machine
from extproc.bench.overhead import Bench, wait_http
from extproc.deploy.envoy_config import ENVOY_DIR, lb_endpoints
from extproc.devstack.loadgen import DEFAULT_TRACE, LoadResult, TraceRequest, Workload, read_trace, run_load
from extproc.devstack.sim import GPU_PROFILES, EndpointSpec
from extproc.devstack.stack import LocalStack, StackConfig, free_port

# Simulated seconds run 2x faster (reported latencies are wall-clock). Faster would not fit
# the CPU: every output token is an SSE event through the simulator, Envoy and the observer.
TIME_SCALE = 0.5
# What a careful engineer would write down for this fleet, from vendor figures: used for
# Envoy's load_balancing_weight and as llm-extproc:prior's GPU-class prior, never by the
# llm-extproc row. The L40S has A100-like FLOPs but 40 % of its bandwidth: 2.
GPU_WEIGHTS: dict[str, float] = {"h100": 5.0, "a100": 3.0, "l40s": 2.0, "l4": 1.5, "t4": 1.0}
ROUTERS = (
    "round_robin",
    "least_request",
    "least_request_weighted",
    "random",
    "vllm-router:power_of_two",
    "vllm-router:cache_aware",
    "llm-extproc",
    "llm-extproc:prior",
)
# Measured capacity is below the analytic one (event-loop overhead, KV stalls, partial
# batches): the earlier calibration peaked at ~90 % of it.
CAPACITY_EFFICIENCY = 0.9


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    endpoints: tuple[EndpointSpec, ...]
    workload: Workload
    duration_s: float  # default replay length, wall seconds
    # (endpoint index, seconds into the replay, factor): that endpoint slows down then.
    degrade: tuple[int, float, float] | None = None
    time_scale: float = TIME_SCALE


CHAT = Workload(
    stream=True, shared_prefix_share=0.5, session_share=0.3, max_prompt_tokens=4096, max_output_tokens=256
)


def _a100(**changes: Any) -> EndpointSpec:
    return replace(EndpointSpec(gpu_class="a100", pool="default"), **changes)


def _small(gpu: str, **changes: Any) -> EndpointSpec:
    """A smaller-memory GPU: fewer sequences, less KV room."""
    spec = EndpointSpec(gpu_class=gpu, pool="default", max_num_seqs=32, kv_capacity_tokens=20_000)
    return replace(spec, **changes)


# Eight A100s with small KV caches: prefix-cache hits decide the TTFT there.
EIGHT_SMALL_A100 = tuple(_a100(kv_capacity_tokens=24_000, block_size_tokens=32) for _ in range(8))

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "heterogeneous",
            "2 A100 + 2 T4 (T4 prefill 5.8x slower, decode 2.1x slower than A100)",
            (_a100(), _a100(), _small("t4"), _small("t4")),
            CHAT,
            10.0,
        ),
        Scenario(
            "unknown-ratio",
            "2 A100 + 2 'l4' that are 4x slower at prefill and 2x slower at decode (the prior says 2x)",
            (
                _a100(),
                _a100(),
                _small("l4", prefill_s_per_token=4 * 76e-6, inter_token_latency_s=2 * 0.0122),
                _small("l4", prefill_s_per_token=4 * 76e-6, inter_token_latency_s=2 * 0.0122),
            ),
            CHAT,
            10.0,
        ),
        Scenario(
            "degrading",
            "2 A100 + L40S + T4; one A100 becomes 2x slower a third of the way in",
            (_a100(), _a100(), _small("l40s", kv_capacity_tokens=40_000, max_num_seqs=48), _small("t4")),
            CHAT,
            21.0,
            degrade=(0, 7.0, 2.0),
        ),
        Scenario(
            "many-prefix",
            "8 A100 with small KV caches; 90 % of prompts start with one of 48 long system prompts",
            EIGHT_SMALL_A100,
            Workload(
                stream=True,
                shared_prefix_share=0.9,
                shared_prefixes=48,
                prefix_tokens=1536,
                session_share=0.0,
                min_prompt_tokens=1600,
                max_prompt_tokens=4096,
                max_output_tokens=128,
            ),
            12.0,
            # Eight servers' token streams in one process: real time, or the CPU is the bottleneck.
            time_scale=1.0,
        ),
        Scenario(
            "conversations",
            "8 A100 with small KV caches; 90 % of requests are the next turn of one of 64 chats "
            "(4 system prompts of 200 tokens, questions up to 128 tokens)",
            EIGHT_SMALL_A100,
            Workload(
                stream=True,
                shared_prefix_share=0.0,
                shared_prefixes=4,
                prefix_tokens=200,
                session_share=0.0,
                conversation_share=0.9,
                conversations=64,
                turn_tokens=128,
                max_prompt_tokens=4096,
                max_output_tokens=128,
            ),
            12.0,
            time_scale=1.0,  # as many-prefix
        ),
    )
}


def capacity_rps(scenario: Scenario, trace: list[TraceRequest]) -> float:
    """Requests per wall second the fleet sustains with no prefix-cache help (analytic).

    Per endpoint, with B sequences in the batch (max_num_seqs, or what the KV cache holds):
    one request costs its prefill (overhead + prompt x per-token) plus its share of the
    decode steps (output x inter-token latency, stretched as under full load, / B).
    """
    work = scenario.workload
    prompt = statistics.fmean(
        max(work.min_prompt_tokens, min(r.prompt_tokens, work.max_prompt_tokens)) for r in trace
    )
    output = statistics.fmean(min(r.output_tokens, work.max_output_tokens) for r in trace)
    total = 0.0
    for i, spec in enumerate(scenario.endpoints):
        profile = spec.profile
        batch = max(1.0, min(spec.max_num_seqs, spec.kv_capacity_tokens / (prompt + output)))
        decode = output * profile.inter_token_latency_s * spec.time_factor_under_load / batch
        prefill = spec.prefill_overhead_s + prompt * profile.prefill_s_per_token
        # A degrading endpoint counts at its degraded speed: the load is what the fleet can
        # carry after the slowdown, not more (which would leave every router overloaded).
        slowdown = scenario.degrade[2] if scenario.degrade and scenario.degrade[0] == i else 1.0
        total += 1.0 / ((decode + prefill) * slowdown)
    return CAPACITY_EFFICIENCY * total / scenario.time_scale


def speedup_for(trace: list[TraceRequest], rate_rps: float, duration_s: float) -> float:
    """The trace speed-up that puts rate x duration requests in the replay window: the
    trace's own rate varies along it, so its mean over the whole file would not do."""
    wanted = max(2, min(len(trace) - 1, round(rate_rps * duration_s)))
    return max(1e-6, trace[wanted].at_s - trace[0].at_s) / duration_s


def _fleet_file(scenario: Scenario, work: Path) -> Path:
    path = work / "fleet.yaml"
    entries = []
    for spec in scenario.endpoints:
        entry = {
            "models": list(spec.models),
            "pool": spec.pool,
            "gpu_class": spec.gpu_class,
            "max_num_seqs": spec.max_num_seqs,
            "kv_capacity_tokens": spec.kv_capacity_tokens,
            "prefill_s_per_token": spec.prefill_s_per_token,
            "inter_token_latency_s": spec.inter_token_latency_s,
            "block_size_tokens": spec.block_size_tokens,
        }
        entries.append(entry)
    path.write_text(yaml.safe_dump({"endpoints": entries}))
    return path


def start_sim(bench: Bench, work: Path, fleet_file: Path, time_scale: float) -> list[dict[str, Any]]:
    ready = work / "fleet.json"
    ready.unlink(missing_ok=True)
    bench.spawn(
        "sim",
        [
            sys.executable,
            "-m",
            "extproc.devstack.sim",
            "--fleet",
            str(fleet_file),
            "--time-scale",
            str(time_scale),
            "--ready-file",
            str(ready),
        ],
    )
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    endpoints: list[dict[str, Any]] = json.loads(ready.read_text())["endpoints"]
    return endpoints


def sim_stats(fleet: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stats = []
    for endpoint in fleet:
        with urllib.request.urlopen(f"http://{endpoint['address']}/sim/stats", timeout=10) as reply:
            stats.append(json.loads(reply.read()))
    return stats


def prefix_hit_rate(stats: list[dict[str, Any]]) -> float:
    """Share of prompt tokens the simulated servers found in their prefix cache (their records)."""
    hit = total = 0
    for endpoint in stats:
        for record in endpoint["records"]:
            hit += int(record["prefix_hit_tokens"])
            total += int(record["prompt_tokens"])
    return hit / total if total else 0.0


def share_halved_after(
    result: LoadResult, address: str, at_s: float, window_s: float = 3.0, step_s: float = 0.5
) -> float | None:
    """Seconds after ``at_s`` until ``address``'s share of requests sent within a trailing
    window falls to half its share before ``at_s``; None if it never does."""
    sent = sorted((r.sent_at_s, r.served_by == address) for r in result.results)
    before = [hit for t, hit in sent if t < at_s]
    if not before or not any(before):
        return None
    baseline = sum(before) / len(before)
    end = at_s + step_s
    last = sent[-1][0] if sent else at_s
    while end <= last:
        window = [hit for t, hit in sent if end - window_s <= t < end and t >= at_s]
        if len(window) >= 10 and sum(window) / len(window) <= baseline / 2:
            return end - at_s
        end += step_s
    return None


def _weights(fleet: list[dict[str, Any]]) -> list[int]:
    # Envoy weights are integers: twice the table's values keeps the ratios exact.
    return [round(2 * GPU_WEIGHTS.get(e["gpu_class"], 1.0)) for e in fleet]


def _prior_policy(work: Path) -> Path:
    path = work / "prior.yaml"
    path.write_text(yaml.safe_dump({"scheduler": {"gpu_weights": GPU_WEIGHTS}, "default": {}}))
    return path


async def _replay(
    base: str,
    trace: list[TraceRequest],
    scenario: Scenario,
    speedup: float,
    args: argparse.Namespace,
    duration_s: float,
    slow_down: Callable[[], Any] | None,
) -> LoadResult:
    load = asyncio.ensure_future(
        run_load(
            base,
            trace,
            scenario.workload,
            speedup=speedup,
            max_requests=args.max_requests,
            duration_s=duration_s,
            concurrency=1024,
            timeout_s=args.timeout,
        )
    )
    if slow_down is not None and scenario.degrade is not None:
        await asyncio.sleep(scenario.degrade[1])
        await slow_down()
    return await load


def run_once(
    name: str,
    scenario: Scenario,
    trace: list[TraceRequest],
    args: argparse.Namespace,
    load: float,
    work: Path,
) -> dict[str, Any]:
    duration_s = args.duration or scenario.duration_s
    speedup = speedup_for(trace, load * capacity_rps(scenario, trace), duration_s)
    fleet_file = _fleet_file(scenario, work)
    bench = Bench(work)
    stack: LocalStack | None = None
    try:
        if name.startswith("llm-extproc"):
            stack = LocalStack(
                StackConfig.on_free_ports(
                    sim_fleet_file=str(fleet_file),
                    time_scale=scenario.time_scale,
                    policy=str(_prior_policy(work)) if name == "llm-extproc:prior" else None,
                    log_dir=str(work / "stack"),
                    # The Wasm data path: the filter decides from the brain's snapshot (docs/wasm.md).
                    data_path="wasm" if name == "llm-extproc-wasm" else "extproc",
                )
            )
            stack.start()
            base = stack.base_url
            fleet = stack.fleet
        else:
            fleet = start_sim(bench, work, fleet_file, scenario.time_scale)
            port = free_port()
            addresses = [e["address"] for e in fleet]
            if name.startswith("vllm-router:"):
                bench.spawn(
                    "router",
                    [
                        vllm_router_binary(),
                        "--port",
                        str(port),
                        "--worker-urls",
                        *[f"http://{a}" for a in addresses],
                        "--policy",
                        name.split(":", 1)[1],
                        "--log-level",
                        "error",
                        # Its metrics listener defaults to port 29000: clashes with any other.
                        "--prometheus-port",
                        str(free_port()),
                    ],
                )
                wait_http(f"http://127.0.0.1:{port}/health", 30)
            else:
                policy = {
                    "round_robin": "ROUND_ROBIN",
                    "least_request": "LEAST_REQUEST",
                    "least_request_weighted": "LEAST_REQUEST",
                    "random": "RANDOM",
                }[name]
                weights = _weights(fleet) if name == "least_request_weighted" else None
                bench.envoy(
                    "envoy",
                    Template((ENVOY_DIR / "bench-plain.yaml").read_text()).substitute(
                        admin_port=free_port(),
                        listen_port=port,
                        lb_policy=policy,
                        lb_endpoints=lb_endpoints(addresses, weights),
                    ),
                )
                wait_http(f"http://{addresses[0]}/health")
                wait_http(f"http://127.0.0.1:{port}/health", 30)
            base = f"http://127.0.0.1:{port}/v1"
        degraded = fleet[scenario.degrade[0]]["address"] if scenario.degrade else ""

        async def slow_down() -> None:
            assert scenario.degrade is not None
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://{degraded}/sim/control", json={"slowdown": scenario.degrade[2]}
                ) as reply,
            ):
                reply.raise_for_status()

        result = asyncio.run(
            _replay(base, trace, scenario, speedup, args, duration_s, slow_down if degraded else None)
        )
        summary = result.summary(ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo)
        row: dict[str, Any] = {
            "router": name,
            "scenario": scenario.name,
            "load": load,
            **summary,
            "prefix_hit_rate": prefix_hit_rate(sim_stats(fleet)),
        }
        if scenario.degrade is not None:
            row["share_halved_after_s"] = share_halved_after(result, degraded, scenario.degrade[1])
        return row
    finally:
        if stack is not None:
            stack.stop()
        bench.stop()


def vllm_router_binary() -> str:
    return shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")


def has_vllm_router() -> bool:
    return bool(shutil.which("vllm-router") or (Path(sys.executable).parent / "vllm-router").exists())


SUMMED = ("requests", "errors", "ttft_p50_s", "ttft_p99_s", "e2e_p99_s", "output_tokens_per_s", "goodput_rps")


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell: the median of each number over the repeats, and the spread of the headline ones."""
    first = runs[0]
    cell: dict[str, Any] = {"router": first["router"], "scenario": first["scenario"], "load": first["load"]}
    for key in (*SUMMED, "prefix_hit_rate"):
        cell[key] = statistics.median(r[key] for r in runs)
    cell["repeats"] = len(runs)
    for key in ("ttft_p99_s", "goodput_rps"):
        cell[f"{key}_min"] = min(r[key] for r in runs)
        cell[f"{key}_max"] = max(r[key] for r in runs)
    if "share_halved_after_s" in first:
        halved = [r["share_halved_after_s"] for r in runs]
        cell["share_halved_after_s"] = [h for h in halved]
    return cell


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3f}"


@dataclass
class Matrix:
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-extproc bench routing", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trace", default=str(DEFAULT_TRACE), help="CSV: TIMESTAMP,ContextTokens,GeneratedTokens"
    )
    parser.add_argument(
        "--scenario", default="heterogeneous", help=f"one of {sorted(SCENARIOS)}, or 'all' (comma-separated)"
    )
    parser.add_argument("--load", default="0.85", help="share(s) of the fleet's capacity, comma-separated")
    parser.add_argument("--duration", type=float, default=0.0, help="replay seconds (0: the scenario's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-requests", type=int, default=3000)
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="per request, wall seconds (then it counts as failed)"
    )
    parser.add_argument("--ttft-slo", type=float, default=1.0, help="seconds (wall clock)")
    parser.add_argument("--tpot-slo", type=float, default=0.05, help="seconds per output token (wall clock)")
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument(
        "--minor-routers",
        default="round_robin,random",
        help="routers run in the default scenario only (they are never the best baseline)",
    )
    parser.add_argument("--seed", type=int, default=1, help="shuffles the order of runs")
    parser.add_argument("--json", default="docs/bench/routing.json")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}")
    trace = read_trace(Path(args.trace), limit=args.max_requests)
    routers = args.routers.split(",")
    if not has_vllm_router():
        skipped = [r for r in routers if r.startswith("vllm-router")]
        print(f"skipped {skipped}: vllm-router is not installed (pip install vllm-router)", flush=True)
        routers = [r for r in routers if r not in skipped]
    rng = random.Random(args.seed)
    matrix = Matrix()
    started = time.monotonic()
    minor = set(args.minor_routers.split(",")) if args.minor_routers else set()
    for scenario_name in names:
        scenario = SCENARIOS[scenario_name]
        scenario_routers = [
            r for r in routers if scenario_name == "heterogeneous" or r not in minor or len(names) == 1
        ]
        for load in (float(x) for x in args.load.split(",")):
            runs: dict[str, list[dict[str, Any]]] = {r: [] for r in scenario_routers}
            for repeat in range(args.repeats):
                order = scenario_routers[:]
                rng.shuffle(order)
                for name in order:
                    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
                        run = run_once(name, scenario, trace, args, load, Path(tmp))
                    run["repeat"] = repeat
                    runs[name].append(run)
                    matrix.runs.append(run)
                    print(
                        f"  [{time.monotonic() - started:6.0f}s] {scenario_name} #{repeat} {name}: "
                        f"p99 {_fmt(run['ttft_p99_s'])} s, goodput {run['goodput_rps']:.2f}/s, "
                        f"errors {run['errors']}",
                        flush=True,
                    )
            print(
                f"\n{scenario.name} at load {load}: {scenario.description}\n"
                f"{'router':<26} {'reqs':>5} {'err':>4} {'ttft p50':>9} {'ttft p99 (min-max)':>24} "
                f"{'e2e p99':>8} {'tok/s':>7} {'goodput':>8} {'prefix':>6}"
            )
            for name in scenario_routers:
                cell = aggregate(runs[name])
                matrix.rows.append(cell)
                spread = f"{_fmt(cell['ttft_p99_s'])} ({_fmt(cell['ttft_p99_s_min'])}-{_fmt(cell['ttft_p99_s_max'])})"
                print(
                    f"{name:<26} {cell['requests']:>5.0f} {cell['errors']:>4.0f} {_fmt(cell['ttft_p50_s']):>9} "
                    f"{spread:>24} {_fmt(cell['e2e_p99_s']):>8} {cell['output_tokens_per_s']:>7.0f} "
                    f"{cell['goodput_rps']:>8.2f} {cell['prefix_hit_rate']:>6.2f}"
                    + (
                        f"  halved after {cell['share_halved_after_s']} s"
                        if "share_halved_after_s" in cell
                        else ""
                    ),
                    flush=True,
                )
            write(args, names, matrix, started)  # after each scenario: a cut-short run keeps its results
    return 0


def _finite(value: Any) -> Any:
    """JSON has no infinity: an infinite percentile (failed requests in the tail) is "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write(args: argparse.Namespace, names: list[str], matrix: Matrix, started: float) -> None:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "command": command(),
                "machine": machine(),
                "trace": args.trace,
                "time_scale": {n: SCENARIOS[n].time_scale for n in names},
                "gpu_weights_for_baselines_and_prior": GPU_WEIGHTS,
                "scenarios": {n: SCENARIOS[n].description for n in names},
                "gpu_profiles": {
                    k: [v.prefill_s_per_token, v.inter_token_latency_s] for k, v in GPU_PROFILES.items()
                },
                "wall_s": round(time.monotonic() - started),
                "results": _finite(matrix.rows),
                "runs": _finite(matrix.runs),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
