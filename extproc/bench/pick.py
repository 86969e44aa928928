"""Decision cost of the scheduler and of policy evaluation (CPU time per call, in-process).

python -m extproc.bench.pick [--json docs/bench/pick.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from extproc.bench.machine import command, machine
from extproc.fleet.state import Endpoint, EndpointMetrics, build_snapshot
from extproc.policy.compile import load_policy
from extproc.policy.types import PolicyInput
from extproc.scheduler.picking import PickContext
from extproc.scheduler.scheduler import Scheduler


def pick_cost(n: int, rounds: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    endpoints = [
        Endpoint(
            f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8000",
            models=("m",),
            gpu_class=("a100", "t4")[i % 2],
            zone=f"z{i % 3}",
            node=f"n{i // 4}",
        )
        for i in range(n)
    ]
    metrics = {
        e.address: EndpointMetrics(
            waiting=float(rng.integers(0, 10)),
            running=float(rng.integers(0, 64)),
            kv_usage=float(rng.random()),
            scraped_at=1000.0,
        )
        for e in endpoints
    }
    snapshot = build_snapshot(endpoints, metrics, version=1, now=0.0)
    scheduler = Scheduler()
    rows = snapshot.rows_serving("m")
    # Requests we sent since the scrape: a few per endpoint, changing with every pick.
    inflight = rng.integers(0, 4, n).astype(np.int64)
    prompt = "You are a helpful assistant. " * 20 + "What is the capital of France?"
    samples = []
    for i in range(rounds):
        ctx = PickContext(
            model="m", prompt_text=prompt + str(i % 50), session_key=f"user-{i % 100}", now=1000.5
        )
        started = time.process_time_ns()
        chosen = scheduler.pick(snapshot, rows, inflight, ctx, 3)
        samples.append((time.process_time_ns() - started) / 1000)
        inflight[chosen[0]] += 1
        inflight[rng.integers(0, n)] = 0  # a response came back somewhere
    samples.sort()
    return {
        "endpoints": n,
        "p50_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99) - 1],
    }


def policy_cost(rules: int, rounds: int, tmp: Path) -> dict[str, float]:
    lines = ["pools:", "  - {name: p, models: [m]}", "rules:"]
    for i in range(rules):
        lines.append(
            f"  - {{name: r{i}, match: {{headers: {{x-team: {{exact: team-{i}}}}}, stream: false}}, timeout_s: {i + 1}}}"
        )
    lines.append("default: {}")
    path = tmp / f"policy-{rules}.yaml"
    path.write_text("\n".join(lines) + "\n")
    policy = load_policy(path)
    # Worst case: the last rule matches, so every rule is checked.
    request = PolicyInput("/v1/chat/completions", "POST", {"x-team": f"team-{rules - 1}"}, "m", False, "chat")
    assert policy.evaluate(request).rule == f"r{rules - 1}"
    samples = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        policy.evaluate(request)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return {
        "rules": rules,
        "p50_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99) - 1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extproc.bench.pick", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="docs/bench/pick.json")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    import tempfile

    results: dict[str, list[dict[str, float]]] = {"pick": [], "policy": []}
    print(f"{'endpoints':>10} {'pick p50 µs':>12} {'p99 µs':>9}")
    for n in (10, 100, 1000, 10000):
        row = pick_cost(n, args.rounds if n <= 1000 else args.rounds // 4)
        results["pick"].append(row)
        print(f"{n:>10} {row['p50_us']:>12.1f} {row['p99_us']:>9.1f}")
    print(f"{'rules':>10} {'policy p50 µs':>14} {'p99 µs':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for rules in (10, 200):
            row = policy_cost(rules, args.rounds * 5, Path(tmp))
            results["policy"].append(row)
            print(f"{rules:>10} {row['p50_us']:>14.1f} {row['p99_us']:>9.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"command": command(), "machine": machine(), "results": results}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
