from __future__ import annotations

import pytest

from extproc.capacity.limits import MemoryLimiter
from extproc.policy.schema import Limits


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refill_continuously_with_an_exact_retry_after() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    limits = Limits(requests_per_minute=60)
    assert all(limiter.check("t", limits, 0, f"r{i}").allowed for i in range(60))
    refused = limiter.check("t", limits, 0, "r60")
    assert not refused.allowed and refused.limit == "requests_per_minute"
    assert refused.retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.check("t", limits, 0, "r61").allowed
    assert limiter.check("other", limits, 0, "x").allowed  # tenants are independent


def test_tokens_are_reserved_then_settled_with_the_real_usage() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    limits = Limits(tokens_per_minute=1000)
    assert limiter.check("t", limits, 900, "a").allowed
    assert limiter.check("t", limits, 900, "b").allowed  # bucket above zero: admitted, goes to -800
    refused = limiter.check("t", limits, 10, "c")
    assert not refused.allowed and refused.limit == "tokens_per_minute"
    assert refused.retry_after_s == pytest.approx(800 / (1000 / 60))


async def test_settle_gives_back_what_was_not_used() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    limits = Limits(tokens_per_minute=1000)
    assert limiter.check("t", limits, 1000, "a").allowed
    assert not limiter.check("t", limits, 1, "b").allowed
    await limiter.settle("t", limits, reserved=1000, actual=100)
    assert limiter.check("t", limits, 1, "c").allowed


async def test_concurrency_leases_are_released_per_request() -> None:
    limiter = MemoryLimiter(Clock())
    limits = Limits(concurrency=2)
    assert limiter.check("t", limits, 0, "a").allowed and limiter.check("t", limits, 0, "b").allowed
    refused = limiter.check("t", limits, 0, "c")
    assert not refused.allowed and refused.limit == "concurrency"
    await limiter.release("t", limits, "a")
    assert limiter.check("t", limits, 0, "c").allowed


async def test_a_refused_request_consumes_nothing() -> None:
    limiter = MemoryLimiter(Clock())
    limits = Limits(requests_per_minute=2, concurrency=1)
    assert limiter.check("t", limits, 0, "a").allowed
    assert not limiter.check("t", limits, 0, "b").allowed  # concurrency refuses...
    assert not limiter.check("t", limits, 0, "c").allowed
    await limiter.release("t", limits, "a")
    assert limiter.check("t", limits, 0, "d").allowed  # ...and took no request from the budget
    await limiter.release("t", limits, "d")
    assert limiter.check("t", limits, 0, "e").limit == "requests_per_minute"
