"""Response cache: hit-path latency vs a real upstream answer, and upstream load saved on a trace.

python -m extproc.bench.cache [--requests 600] [--distinct 150] [--json docs/bench/cache.json]

Runs the local stack (real Envoy, ext_proc with the in-process cache, simulated fleet at time
scale 0.2) with a policy that caches every route. Part 1: the same small request answered by the
upstream (misses: a fresh prompt each time) and by the cache (hits), interleaved, sequential.
Part 2: the arrival trace's first requests replayed with prompts drawn from a Zipf(1.1)
distribution over ``--distinct`` prompts (a FAQ-like workload); counts requests that reached a
GPU with and without the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from extproc.bench.machine import command, machine
from extproc.devstack.loadgen import DEFAULT_TRACE, read_trace
from extproc.devstack.stack import LocalStack, StackConfig

POLICY = """
pools:
  - {name: fast, models: [llama-3-8b, llama-3-70b]}
  - {name: slow, models: [llama-3-8b]}
default:
  cache: {ttl_s: 3600}
"""


def body(text: str, max_tokens: int = 16) -> dict[str, Any]:
    return {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> tuple[int, str, float]:
    started = time.perf_counter()
    async with session.post(url, json=payload, headers={"x-tenant-id": "bench"}) as reply:
        await reply.read()
        return reply.status, reply.headers.get("x-llm-cache", ""), time.perf_counter() - started


async def hit_latency(url: str, rounds: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        await post(session, url, body("the cached question"))
        for _ in range(50):  # wait until the first answer is stored
            if (await post(session, url, body("the cached question")))[1] == "hit":
                break
            await asyncio.sleep(0.05)
        hits, misses = [], []
        for i in range(rounds):
            status, cache, elapsed = await post(session, url, body("the cached question"))
            if status == 200 and cache == "hit":
                hits.append(elapsed)
            status, cache, elapsed = await post(session, url, body(f"a fresh question {i}"))
            if status == 200 and cache == "miss":
                misses.append(elapsed)
    return {
        "hits": len(hits),
        "misses": len(misses),
        "hit_p50_ms": statistics.median(hits) * 1000,
        "miss_p50_ms": statistics.median(misses) * 1000,
        "speedup": statistics.median(misses) / statistics.median(hits),
    }


async def replay(url: str, requests: int, distinct: int, speedup: float) -> dict[str, int]:
    arrivals = read_trace(Path(DEFAULT_TRACE), limit=requests)
    rng = np.random.default_rng(7)
    ranks = rng.zipf(1.1, size=requests * 4)
    picks = [int(r) - 1 for r in ranks if r <= distinct][:requests]
    counts = {"requests": 0, "ok": 0, "hits": 0}
    async with aiohttp.ClientSession() as session:

        async def one(at: float, prompt: int) -> None:
            await asyncio.sleep(at)
            status, cache, _ = await post(session, url, body(f"frequently asked question number {prompt}", 8))
            counts["requests"] += 1
            counts["ok"] += status == 200
            counts["hits"] += cache == "hit"

        await asyncio.gather(*((one(a.at_s / speedup, p)) for a, p in zip(arrivals, picks, strict=False)))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.cache", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--distinct", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=100, help="hit/miss pairs for the latency part")
    parser.add_argument("--speedup", type=float, default=4.0, help="trace replay speed-up")
    parser.add_argument("--json", default="docs/bench/cache.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        local = LocalStack(
            StackConfig.on_free_ports(
                time_scale=0.2,
                policy=str(policy),
            )
        ).start()
        try:
            url = f"http://127.0.0.1:{local.listen_port}/v1/chat/completions"
            latency = asyncio.run(hit_latency(url, args.rounds))
            before = local.sim_served()
            load = asyncio.run(replay(url, args.requests, args.distinct, args.speedup))
            upstream = local.sim_served() - before
        finally:
            local.stop()
    saved = {**load, "upstream_requests": upstream, "upstream_saved_share": 1 - upstream / load["requests"]}
    print(
        f"hit p50 {latency['hit_p50_ms']:.2f} ms vs upstream p50 {latency['miss_p50_ms']:.2f} ms "
        f"({latency['speedup']:.1f}x, {latency['hits']} hits / {latency['misses']} misses)"
    )
    print(
        f"trace replay: {load['requests']} requests ({args.distinct} distinct prompts, Zipf 1.1), "
        f"{load['hits']} cache hits, {upstream} reached a GPU: {saved['upstream_saved_share']:.1%} saved"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command(),
                    "machine": machine(),
                    "results": [{"part": "hit_latency", **latency}, {"part": "trace_replay", **saved}],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
