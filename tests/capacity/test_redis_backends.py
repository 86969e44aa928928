"""The Redis cache and limiter against a real redis-server (installed by the fixture if missing)."""

from __future__ import annotations

import asyncio
import time

from extproc.capacity.cache import CachedResponse, RedisCache
from extproc.capacity.limits import RedisLimiter
from extproc.policy.schema import Limits
from tests.conftest import RedisServer


async def test_cache_round_trip_ttl_and_stale_window(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url)
    try:
        now = time.time()
        entry = CachedResponse(200, "text/event-stream", b"data: {}\n\ndata: [DONE]\n\n", now, now + 0.3)
        await cache.put("k", entry, keep_stale_s=0.5)
        assert await cache.get("k") == entry
        await asyncio.sleep(0.4)
        assert await cache.get("k") is None  # past its TTL
        assert await cache.get("k", stale_s=10) == entry  # still kept for degraded mode
        await asyncio.sleep(0.6)
        assert await cache.get("k", stale_s=10) is None  # Redis expired it
        assert cache.errors == 0
    finally:
        await cache.close()


async def test_cache_failures_are_misses_never_errors(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url)
    try:
        redis_server.stop()
        now = time.time()
        await cache.put("k", CachedResponse(200, "application/json", b"{}", now, now + 60))
        assert await cache.get("k") is None
        assert cache.errors == 2
    finally:
        await cache.close()


async def test_two_replicas_share_one_budget(redis_server: RedisServer) -> None:
    # A generous timeout: this asserts atomicity, not speed on a loaded test machine.
    replicas = [RedisLimiter(redis_server.url, timeout_s=5.0), RedisLimiter(redis_server.url, timeout_s=5.0)]
    limits = Limits(requests_per_minute=30, tokens_per_minute=100_000)
    try:
        decisions = await asyncio.gather(
            *(replicas[i % 2].acquire("acme", limits, 10, f"r{i}") for i in range(60))
        )
        assert not any(d.store_error for d in decisions)
        admitted = sum(d.allowed for d in decisions)
        # The script runs atomically: exactly the budget, plus at most the refill during the burst.
        assert 30 <= admitted <= 31
        refused = next(d for d in decisions if not d.allowed)
        assert refused.limit == "requests_per_minute" and 0 < refused.retry_after_s <= 2.0
        assert (await replicas[0].acquire("globex", limits, 10, "g")).allowed  # another tenant
    finally:
        for replica in replicas:
            await replica.close()


async def test_tokens_settle_and_concurrency_leases_across_replicas(redis_server: RedisServer) -> None:
    a, b = RedisLimiter(redis_server.url), RedisLimiter(redis_server.url)
    try:
        tokens = Limits(tokens_per_minute=1000)
        assert (await a.acquire("t", tokens, 1100, "x")).allowed  # may go below zero
        assert (await b.acquire("t", tokens, 1, "y")).limit == "tokens_per_minute"
        await a.settle("t", tokens, reserved=1100, actual=200)
        assert (await b.acquire("t", tokens, 1, "z")).allowed
        lease = Limits(concurrency=1)
        assert (await a.acquire("c", lease, 0, "first")).allowed
        assert (await b.acquire("c", lease, 0, "second")).limit == "concurrency"
        await a.release("c", lease, "first")
        assert (await b.acquire("c", lease, 0, "second")).allowed
    finally:
        await a.close()
        await b.close()


async def test_a_dead_replicas_leases_expire(redis_server: RedisServer) -> None:
    crashed = RedisLimiter(redis_server.url, lease_s=0.3)
    survivor = RedisLimiter(redis_server.url)
    try:
        lease = Limits(concurrency=1)
        assert (await crashed.acquire("c", lease, 0, "never-released")).allowed
        assert not (await survivor.acquire("c", lease, 0, "next")).allowed
        await asyncio.sleep(0.4)
        assert (await survivor.acquire("c", lease, 0, "next")).allowed
    finally:
        await crashed.close()
        await survivor.close()


async def test_redis_down_fails_open_by_default_and_closed_when_configured(redis_server: RedisServer) -> None:
    open_limiter = RedisLimiter(redis_server.url)
    closed_limiter = RedisLimiter(redis_server.url, fail_open=False)
    try:
        redis_server.stop()
        limits = Limits(requests_per_minute=1)
        opened = await open_limiter.acquire("t", limits, 0, "a")
        closed = await closed_limiter.acquire("t", limits, 0, "b")
        assert opened.allowed and opened.store_error
        assert not closed.allowed and closed.store_error
        assert open_limiter.store_errors == closed_limiter.store_errors == 1
    finally:
        await open_limiter.close()
        await closed_limiter.close()
