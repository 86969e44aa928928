"""Decision cost of the scheduler and of policy evaluation (CPU time per call, in-process).

python -m extproc.bench.pick [--json docs/bench/pick.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from extproc.bench.machine import write_report
from extproc.fleet.state import Endpoint, EndpointMetrics, build_snapshot
from extproc.policy.compile import CompiledPolicy, load_policy
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


PROVIDER_POLICY = """
tenants:
  plans: {t: {hosted: {spillover: true, budget_usd_per_hour: 100}}}
pools:
  - {name: p, models: [m]}
  - name: hosted
    kind: provider
    models: [h]
    provider: {base_url: "https://api.example.test/v1", credential: {file: /k}}
    prices: {h: {input_per_1m: 1, output_per_1m: 2}}
fallbacks: {m: [h]}
default: {}
spillover: {ttft_objective_s: 1.0, targets: {m: {model: h, pool: hosted}}}
"""
PLAIN_POLICY = """
tenants:
  plans: {t: {}}
pools:
  - {name: p, models: [m]}
default: {}
"""


def _returning(policy: CompiledPolicy) -> Callable[[], CompiledPolicy]:
    return lambda: policy


def provider_cost(n: int, rounds: int, tmp: Path) -> dict[str, float]:
    """What provider-aware routing adds to a whole decision (policy + scheduler): the same
    request through a Router whose policy has a provider pool in the fallback chain and
    spill-over for the tenant (the fleet has room: the check runs, nothing spills), against one
    without; interleaved, so both see the same machine state. Also the cost of a decision that
    does spill (the request reshaped for the provider)."""
    from extproc.config import ServerConfig
    from extproc.fleet.state import FleetState, InFlight
    from extproc.request import Task, parse_body, parse_headers
    from extproc.router import Router

    endpoints = [Endpoint(f"10.1.{i // 256}.{i % 256}:8000", pool="p", models=("m",)) for i in range(n)]
    metrics = {e.address: EndpointMetrics(waiting=1.0, running=4.0, scraped_at=1000.0) for e in endpoints}
    fleet = FleetState()
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=0.0), synced=True)
    routers = {}
    for name, text in (("plain", PLAIN_POLICY), ("provider", PROVIDER_POLICY)):
        (tmp / f"{name}.yaml").write_text(text)
        policy = load_policy(tmp / f"{name}.yaml")
        routers[name] = Router(
            ServerConfig(), fleet, Scheduler(), InFlight(), clock=lambda: 1000.5, policy=_returning(policy)
        )
    headers = parse_headers([(":path", "/v1/chat/completions"), (":method", "POST"), ("x-tenant-id", "t")])
    body = b'{"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
    request = parse_body(Task.CHAT, "application/json", body, 1 << 20)
    samples: dict[str, list[float]] = {"plain": [], "provider": [], "spilled": []}
    for _ in range(rounds):
        for name in ("plain", "provider"):
            started = time.perf_counter_ns()
            decision = routers[name].decide(headers, request)
            samples[name].append((time.perf_counter_ns() - started) / 1000)
            routers[name].finished(decision.endpoints[0])
    # Every endpoint's batch full and 20 queued: the predictor sends the request to the provider.
    busy = {e.address: EndpointMetrics(waiting=20.0, running=4.0, scraped_at=1000.0) for e in endpoints}
    fleet.publish(build_snapshot(endpoints, busy, version=2, now=0.0), synced=True)
    for _ in range(rounds):
        started = time.perf_counter_ns()
        decision = routers["provider"].decide(headers, request)
        samples["spilled"].append((time.perf_counter_ns() - started) / 1000)
        assert decision.spilled
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "endpoints": n,
        "plain_p50_us": p50["plain"],
        "provider_aware_p50_us": p50["provider"],
        "added_p50_us": p50["provider"] - p50["plain"],
        "spilled_decision_p50_us": p50["spilled"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extproc.bench.pick", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="docs/bench/pick.json")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument(
        "--parts", default="pick,policy,providers", help="which measurements, comma-separated"
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    import tempfile

    results: dict[str, list[dict[str, float]]] = {"pick": [], "policy": [], "providers": []}
    print(f"{'endpoints':>10} {'pick p50 µs':>12} {'p99 µs':>9}")
    for n in (10, 100, 1000, 10000) if "pick" in parts else ():
        row = pick_cost(n, args.rounds if n <= 1000 else args.rounds // 4)
        results["pick"].append(row)
        print(f"{n:>10} {row['p50_us']:>12.1f} {row['p99_us']:>9.1f}")
    print(f"{'rules':>10} {'policy p50 µs':>14} {'p99 µs':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for rules in (10, 200) if "policy" in parts else ():
            row = policy_cost(rules, args.rounds * 5, Path(tmp))
            results["policy"].append(row)
            print(f"{rules:>10} {row['p50_us']:>14.1f} {row['p99_us']:>9.1f}")
        print(f"{'endpoints':>10} {'decide p50 µs':>14} {'+providers':>11} {'added':>6} {'spilled':>8}")
        for n in (10, 100, 1000) if "providers" in parts else ():
            row = provider_cost(n, args.rounds, Path(tmp))
            results["providers"].append(row)
            print(
                f"{n:>10} {row['plain_p50_us']:>14.1f} {row['provider_aware_p50_us']:>11.1f} "
                f"{row['added_p50_us']:>6.1f} {row['spilled_decision_p50_us']:>8.1f}"
            )
    write_report(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
