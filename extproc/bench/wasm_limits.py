"""What tenant limits cost on the Wasm data path: the filter's own decision vs an escalated one.

python -m extproc.bench.wasm_limits [--requests 300] [--rounds 3] [--json docs/bench/wasm_limits.json]

Runs `up --data-path wasm` (real Envoy with the filter, the brain, the simulated fleet at time
scale 0.001) with a policy whose tenants differ only in their plan's limits: ``table`` (none:
the filter decides), ``rate`` (a request-rate limit nobody reaches: escalated to the brain) and
``leased`` (a concurrency limit nobody reaches: escalated, and the brain holds the lease until
the filter's record of the request arrives, which the filter sends as the request ends).
Sequential requests, the three tenants interleaved so that machine noise hits them alike; each
round reports P50 and P90 per tenant. A failed request fails the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from extproc.bench.machine import write_report
from extproc.devstack.stack import LocalStack, StackConfig

POLICY = """
tenants:
  header: x-tenant-id
  plans:
    table: {tier: standard}
    rate: {tier: standard, limits: {requests_per_minute: 100000000}}
    leased: {tier: standard, limits: {concurrency: 100000}}
pools:
  - {name: fast, models: [llama-3-8b, llama-3-70b]}
  - {name: slow, models: [llama-3-8b]}
default: {}
"""
TENANTS = ("table", "rate", "leased")
BODY = json.dumps(
    {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
).encode()


def once(url: str, tenant: str) -> float:
    request = urllib.request.Request(
        url, data=BODY, headers={"content-type": "application/json", "x-tenant-id": tenant}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{tenant}: status {reply.status}")
    return time.perf_counter() - started


def one_round(url: str, requests: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {tenant: [] for tenant in TENANTS}
    for _ in range(requests):
        for tenant in TENANTS:
            samples[tenant].append(once(url, tenant))
    out = {}
    for tenant, values in samples.items():
        values.sort()
        out[tenant] = {
            "p50_ms": round(statistics.median(values) * 1000, 3),
            "p90_ms": round(values[int(len(values) * 0.9)] * 1000, 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.wasm_limits", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=300, help="per tenant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="docs/bench/wasm_limits.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-wasm-limits-") as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        local = LocalStack(
            StackConfig.on_free_ports(time_scale=0.001, policy=str(policy), data_path="wasm")
        ).start()
        try:
            url = f"{local.base_url}/chat/completions"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the filter's first snapshot
                try:
                    once(url, "table")
                    break
                except OSError:
                    time.sleep(0.2)
            for tenant in TENANTS:  # warm-up
                for _ in range(30):
                    once(url, tenant)
            rounds = [one_round(url, args.requests) for _ in range(args.rounds)]
        finally:
            local.stop()
    print(f"{'round':<6}" + "".join(f"{t + ' P50/P90 ms':>24}" for t in TENANTS))
    for i, result in enumerate(rounds):
        cells = "".join(f"{result[t]['p50_ms']:>14.3f} / {result[t]['p90_ms']:<7.3f}" for t in TENANTS)
        print(f"{i + 1:<6}{cells}")
    if args.json:
        write_report(args.json, rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
