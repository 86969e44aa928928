"""Hosted providers through the real Envoy: spill-over at 120 % of the fleet, and fallback while
the provider answers 429.

llm-extproc bench providers [--json docs/bench/providers.json] [--repeats 3]

spillover: a small simulated fleet (2 endpoints, 4 sequences each) is measured first (its
throughput when saturated, and its TTFT when idle); then requests arrive (Poisson) at 120 % of
that throughput for ``--duration`` seconds, twice on the same stack: for a tenant whose plan
allows spill-over to the simulated provider (TTFT twice the fleet's idle TTFT, no capacity
limit), and for one whose plan does not (the fleet alone). Reported per run: TTFT p99, the
share of all requests answered within the objective (failures count as misses), the share
spilled, and their cost from the policy's prices (read from llm_extproc_cost_usd_total).

fallback: premium requests for gpt-4 go to the simulated provider, with the local model as
fallback; 5 s in, the provider answers 429 (retry-after 2 s) for 30 s. Non-streaming requests
at a steady rate; client-visible errors, the share served by the fallback, and whether the
provider serves again afterwards are reported.

Both scenarios send a client credential on every request; ``credential_leaks`` counts requests
on which the provider double saw a client credential plus requests on which a self-hosted
endpoint saw the provider key (both doubles record it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import ssl
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from extproc.bench.machine import write_report
from extproc.devstack.provider_sim import CLIENT_TOKEN_PREFIX
from extproc.devstack.stack import LocalStack, StackConfig

TIME_SCALE = 1.0
PROVIDER_KEY = "sk-bench-provider-key"
CLIENT_CREDENTIAL = f"Bearer {CLIENT_TOKEN_PREFIX}bench-user"
MAX_TOKENS = 32
TOKEN_CHUNK = re.compile(rb'"content":\s*"[^"]')  # a chunk carrying generated text, not the role
# Small on purpose: the fleet, not this 2-core machine's CPU, must be what saturates at 120 %.
FLEET = """
endpoints:
  - {models: [llama-3-8b], pool: fast, gpu_class: a100, max_num_seqs: 4, inter_token_latency_s: 0.02}
  - {models: [llama-3-8b], pool: fast, gpu_class: a100, max_num_seqs: 4, inter_token_latency_s: 0.02}
"""
POLICY = """
tenants:
  header: x-tenant-id
  plans:
    spill: {{tier: standard, hosted: {{spillover: true, budget_usd_per_hour: 1000}}}}
    alone: {{tier: standard}}
    premium: {{tier: premium}}
pools:
  - {{name: fast, models: [llama-3-8b]}}
  - name: overflow
    kind: provider
    models: [gpt-4o-mini]
    provider:
      base_url: https://api.provider.test/v1
      credential: {{file: {work}/key/api-key}}
      ca_file: {work}/provider-ca.pem
      http2: false
    prices: {{gpt-4o-mini: {{input_per_1m: 0.15, output_per_1m: 0.6}}}}
models:
  gpt-4: {{model: gpt-4o-mini, pool: overflow}}
rules:
  - name: premium-to-the-provider
    match: {{tier: [premium], model: [gpt-4]}}
    fallback: [llama-3-8b]
default: {{}}
spillover:
  ttft_objective_s: {objective}
  queue_s_per_request: {queue_s}
  targets: {{llama-3-8b: {{model: gpt-4o-mini, pool: overflow}}}}
"""


@dataclass
class Answer:
    status: int
    ttft_s: float
    by_provider: bool
    by_fallback: bool
    at_s: float
    error: str = ""


async def _request(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], tenant: str, started: float
) -> Answer:
    sent = time.monotonic()
    headers = {"x-tenant-id": tenant, "authorization": CLIENT_CREDENTIAL}
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
        ) as reply:
            by_provider = "x-provider-sim" in reply.headers
            by_fallback = "x-llm-fallback-of" in reply.headers
            if reply.status != 200:
                text = (await reply.read())[:160].decode(errors="replace")
                return Answer(reply.status, 0.0, by_provider, by_fallback, sent - started, text)
            ttft = 0.0
            if body.get("stream"):
                async for line in reply.content:
                    if not ttft and line.startswith(b"data: ") and TOKEN_CHUNK.search(line):
                        ttft = time.monotonic() - sent
            else:
                await reply.read()
                ttft = time.monotonic() - sent
            return Answer(200, ttft, by_provider, by_fallback, sent - started)
    except (aiohttp.ClientError, TimeoutError):
        return Answer(0, 0.0, False, False, sent - started)


async def open_loop(
    base_url: str, rate: float, duration_s: float, body: dict[str, Any], tenant: str, seed: int = 1
) -> list[Answer]:
    """Poisson arrivals at ``rate`` per second for ``duration_s`` (bounded by 20,000 requests)."""
    rng = random.Random(seed)
    url = base_url.rstrip("/") + "/chat/completions"
    answers: list[Answer] = []
    connector = aiohttp.TCPConnector(limit=1024)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        due = started
        tasks: list[asyncio.Task[Answer]] = []
        while due - started < duration_s and len(tasks) < 20_000:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_request(session, url, body, tenant, started)))
            due += rng.expovariate(rate)
        answers = list(await asyncio.gather(*tasks))
    return answers


async def closed_loop(base_url: str, concurrency: int, duration_s: float, body: dict[str, Any]) -> float:
    """Completed requests per second with ``concurrency`` always outstanding: the saturated rate."""
    url = base_url.rstrip("/") + "/chat/completions"
    done = 0
    deadline = time.monotonic() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            answer = await _request(session, url, body, "alone", time.monotonic())
            done += answer.status == 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return done / (time.monotonic() - started)


def chat(model: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "benchmark prompt " * 20}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }


def _provider(stack: LocalStack, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    sim = stack.provider_sims["overflow"]
    context = ssl.create_default_context(cafile=sim["ca_file"])
    request = urllib.request.Request(
        f"https://127.0.0.1:{sim['port']}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


def _provider_key_seen_by_fleet(stack: LocalStack) -> int:
    digests = {hashlib.sha256(v.encode()).hexdigest()[:16] for v in (PROVIDER_KEY, f"Bearer {PROVIDER_KEY}")}
    seen = 0
    for endpoint in stack.fleet:
        with urllib.request.urlopen(f"http://{endpoint['address']}/sim/stats", timeout=10) as reply:
            counts = json.loads(reply.read())["credential_hashes"]
        seen += sum(n for digest, n in counts.items() if digest in digests)
    return seen


def _cost(stack: LocalStack, pool: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("llm_extproc_cost_usd_total{") and f'pool="{pool}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _leaks(stack: LocalStack) -> int:
    return int(_provider(stack, "/sim/stats")["credential_leaks"]) + _provider_key_seen_by_fleet(stack)


def _ttft_summary(answers: list[Answer], objective_s: float) -> dict[str, Any]:
    ok = [a for a in answers if a.status == 200]
    ttft = np.array([a.ttft_s for a in ok]) if ok else np.zeros(1)
    return {
        "requests": len(answers),
        "errors": len(answers) - len(ok),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p99_s": round(float(np.percentile(ttft, 99)), 4),
        "slo_met_share": round(sum(1 for a in ok if a.ttft_s <= objective_s) / max(1, len(answers)), 4),
    }


def _stack(work: Path, objective_s: float, queue_s: float) -> LocalStack:
    (work / "key").mkdir(exist_ok=True)
    (work / "key" / "api-key").write_text(PROVIDER_KEY)
    (work / "fleet.yaml").write_text(FLEET)
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(work=work, objective=objective_s, queue_s=queue_s))
    stack = LocalStack(
        StackConfig.on_free_ports(
            sim_fleet_file=str(work / "fleet.yaml"),
            time_scale=TIME_SCALE,
            policy=str(policy),
            log_dir=str(work / "stack"),
        )
    )
    stack.start()
    return stack


def spillover(args: argparse.Namespace, work: Path, repeat: int, queue_factor: float) -> dict[str, Any]:
    objective = args.ttft_objective
    stack = _stack(work, objective, args.queue_s_per_request or 0.1)
    try:
        # Warm up, then what the fleet does idle and saturated.
        asyncio.run(open_loop(stack.base_url, 5.0, 2.0, chat("llama-3-8b", True), "alone"))
        idle = asyncio.run(
            open_loop(stack.base_url, 2.0, 3.0, chat("llama-3-8b", True), "alone", seed=repeat)
        )
        idle_ttft = statistics.median(a.ttft_s for a in idle if a.status == 200)
        capacity = asyncio.run(closed_loop(stack.base_url, 24, args.calibrate, chat("llama-3-8b", True)))
        # A request ahead at an endpoint costs one completion there: on average 1 / (its share of
        # the saturated rate). That is a mean; completions are uneven, so queue_factor adds
        # headroom (2: a request that finds the batch full spills). The policy is rewritten with
        # it and the reloader picks it up.
        queue_s = args.queue_s_per_request or queue_factor * len(stack.fleet) / capacity
        (work / "policy.yaml").write_text(
            POLICY.format(work=work, objective=objective, queue_s=round(queue_s, 4))
        )
        _provider(stack, "/sim/control", {"ttft_s": 2 * idle_ttft})
        rate = args.load * capacity
        time.sleep(2.0)
        alone = asyncio.run(
            open_loop(stack.base_url, rate, args.duration, chat("llama-3-8b", True), "alone", seed=repeat)
        )
        time.sleep(3.0)  # the fleet drains its queue
        cost_before = _cost(stack, "overflow")
        spilled = asyncio.run(
            open_loop(stack.base_url, rate, args.duration, chat("llama-3-8b", True), "spill", seed=repeat)
        )
        time.sleep(1.0)  # the observer reports the last usages
        return {
            "scenario": "spillover",
            "repeat": repeat,
            "queue_factor": queue_factor,
            "fleet_capacity_rps": round(capacity, 2),
            "offered_rps": round(rate, 2),
            "fleet_idle_ttft_s": round(idle_ttft, 4),
            "provider_ttft_s": round(2 * idle_ttft, 4),
            "ttft_objective_s": objective,
            "queue_s_per_request": round(queue_s, 4),
            **_ttft_summary(spilled, objective),
            "spilled_share": round(sum(a.by_provider for a in spilled) / max(1, len(spilled)), 4),
            "cost_usd": round(_cost(stack, "overflow") - cost_before, 6),
            "credential_leaks": _leaks(stack),
            "fleet_alone": _ttft_summary(alone, objective),
        }
    finally:
        stack.stop()


def fallback(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    stack = _stack(work, args.ttft_objective, args.queue_s_per_request or 0.1)
    try:
        asyncio.run(open_loop(stack.base_url, 5.0, 2.0, chat("gpt-4", False), "premium"))
        cost_before = _cost(stack, "overflow")

        async def scenario() -> list[Answer]:
            load = asyncio.create_task(
                open_loop(
                    stack.base_url, args.fallback_rate, 5.0 + 30.0 + 10.0, chat("gpt-4", False), "premium"
                )
            )
            await asyncio.sleep(5.0)
            await asyncio.to_thread(
                _provider, stack, "/sim/control", {"rate_limit_for_s": 30.0, "retry_after_s": 2}
            )
            return await load

        answers = asyncio.run(scenario())
        time.sleep(1.0)
        during = [a for a in answers if 5.0 <= a.at_s < 35.0]
        failed = [(round(a.at_s, 1), a.status, a.error) for a in answers if a.status != 200]
        after = [a for a in answers if a.at_s >= 37.0]
        provider = _provider(stack, "/sim/stats")
        return {
            "scenario": "fallback",
            **_ttft_summary(answers, args.ttft_objective),
            "served_by_fallback_share": round(
                sum(not a.by_provider for a in answers) / max(1, len(answers)), 4
            ),
            "during_429": {
                "requests": len(during),
                "errors": sum(a.status != 200 for a in during),
                "served_by_fallback_share": round(
                    sum(not a.by_provider for a in during) / max(1, len(during)), 4
                ),
                "through_the_hop": sum(a.by_fallback for a in during),
            },
            "after_429_served_by_provider_share": round(
                sum(a.by_provider for a in after) / max(1, len(after)), 4
            ),
            "provider_429s": provider["rate_limited"],
            "failed_at_s_status": failed[:20],
            "cost_usd": round(_cost(stack, "overflow") - cost_before, 6),
            "credential_leaks": _leaks(stack),
        }
    finally:
        stack.stop()


def _spillover_summary(runs: list[dict[str, Any]], headline: float) -> dict[str, Any]:
    """The headline factor's median run (by SLO share), with every run and each factor's spread."""
    chosen = sorted((r for r in runs if r["queue_factor"] == headline), key=lambda r: r["slo_met_share"])
    summary = dict(chosen[len(chosen) // 2])
    spread: dict[str, dict[str, list[float]]] = {}
    for factor in dict.fromkeys(r["queue_factor"] for r in runs):
        mine = [r for r in runs if r["queue_factor"] == factor]
        spread[f"x{factor:g}"] = {
            key: [min(r[key] for r in mine), max(r[key] for r in mine)]
            for key in ("slo_met_share", "ttft_p99_s", "spilled_share", "cost_usd")
        }
        spread[f"x{factor:g}"]["fleet_alone_slo_met_share"] = [
            min(r["fleet_alone"]["slo_met_share"] for r in mine),
            max(r["fleet_alone"]["slo_met_share"] for r in mine),
        ]
    summary["credential_leaks"] = sum(r["credential_leaks"] for r in runs)
    summary["spread_min_max"] = spread
    summary["runs"] = runs
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-extproc bench providers", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="docs/bench/providers.json")
    parser.add_argument("--scenarios", default="spillover,fallback")
    parser.add_argument("--repeats", type=int, default=3, help="spill-over runs (fresh stack each)")
    parser.add_argument("--load", type=float, default=1.2, help="offered load / the fleet's saturated rate")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    parser.add_argument("--calibrate", type=float, default=6.0, help="seconds measuring the saturated rate")
    parser.add_argument("--ttft-objective", type=float, default=0.5, help="seconds")
    parser.add_argument(
        "--queue-s-per-request",
        type=float,
        default=0.0,
        help="default: calibrated (endpoints / saturated rate) x each --queue-factors",
    )
    parser.add_argument(
        "--queue-factors", default="2,1", help="headroom on the calibrated wait; the first is the headline"
    )
    parser.add_argument("--fallback-rate", type=float, default=4.0, help="requests per second")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    scenarios = args.scenarios.split(",")
    factors = [float(f) for f in args.queue_factors.split(",")]
    runs: list[dict[str, Any]] = []
    for factor in factors if "spillover" in scenarios else []:
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="bench-providers-") as tmp:
                row = spillover(args, Path(tmp), repeat, factor)
            runs.append(row)
            alone = row["fleet_alone"]
            print(
                f"spillover x{factor:g} #{repeat}: {row['requests']} reqs at {row['offered_rps']}/s "
                f"({args.load:.0%} of {row['fleet_capacity_rps']}/s), errors {row['errors']}, TTFT p99 "
                f"{row['ttft_p99_s']} s, within {row['ttft_objective_s']} s: {row['slo_met_share']:.1%} "
                f"(fleet alone: {alone['slo_met_share']:.1%}, p99 {alone['ttft_p99_s']} s, errors "
                f"{alone['errors']}), spilled {row['spilled_share']:.1%}, ${row['cost_usd']}, "
                f"leaks {row['credential_leaks']}",
                flush=True,
            )
    if runs:
        results.append(_spillover_summary(runs, factors[0]))
    if "fallback" in scenarios:
        with tempfile.TemporaryDirectory(prefix="bench-providers-") as tmp:
            row = fallback(args, Path(tmp))
        results.append(row)
        print(
            f"fallback: {row['requests']} reqs, errors {row['errors']} (during the 429s: "
            f"{row['during_429']['errors']} of {row['during_429']['requests']}, "
            f"{row['during_429']['served_by_fallback_share']:.1%} by the fallback), after: "
            f"{row['after_429_served_by_provider_share']:.1%} by the provider again, "
            f"provider 429s {row['provider_429s']}, leaks {row['credential_leaks']}",
            flush=True,
        )
    write_report(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
