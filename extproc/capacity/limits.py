"""Tenant budgets: requests per minute, tokens per minute and concurrent requests.

Requests and tokens are token buckets that refill continuously (capacity = the per-minute
limit). A request is admitted while its tenant's token bucket is above zero and takes its
estimated tokens (prompt estimate + max_tokens), which may push the bucket below zero; when the
response ends, ``settle`` corrects the bucket with the real usage. So a tenant can overshoot by
at most one request's tokens, and a request larger than the whole budget is still served once
the bucket has refilled. Concurrency is a lease per request, released when the response ends.

``MemoryLimiter`` is the single-replica default. ``RedisLimiter`` shares the budgets between
replicas with one atomic Lua script per decision (Redis' own clock, so replicas' clocks do not
matter); concurrency leases expire after ``lease_s`` so a replica that dies holding leases does
not lock its tenants out. When Redis is unreachable the limiter fails open (admits, counts
``store_errors``) unless built with ``fail_open=False``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from extproc.policy.schema import Limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LimitDecision:
    allowed: bool
    limit: str = ""  # which limit refused: requests_per_minute, tokens_per_minute, concurrency
    retry_after_s: float = 0.0
    store_error: bool = False  # Redis was unreachable; allowed tells how we failed


ALLOWED = LimitDecision(True)


class Limiter(Protocol):
    async def acquire(self, key: str, limits: Limits, tokens: int, request_id: str) -> LimitDecision: ...

    async def release(self, key: str, limits: Limits, request_id: str) -> None: ...

    async def settle(self, key: str, limits: Limits, reserved: int, actual: int) -> None: ...


@dataclass(slots=True)
class _Bucket:
    level: float
    updated: float

    def refill(self, capacity: float, now: float) -> None:
        self.level = min(capacity, self.level + (now - self.updated) * capacity / 60.0)
        self.updated = now


@dataclass(slots=True)
class _TenantState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    leases: set[str] = field(default_factory=set)


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._state: dict[str, _TenantState] = {}

    def _tenant(self, key: str, limits: Limits, now: float) -> _TenantState:
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = _TenantState()
        if limits.requests_per_minute is not None:
            if state.requests is None:
                state.requests = _Bucket(float(limits.requests_per_minute), now)
            state.requests.refill(limits.requests_per_minute, now)
        if limits.tokens_per_minute is not None:
            if state.tokens is None:
                state.tokens = _Bucket(float(limits.tokens_per_minute), now)
            state.tokens.refill(limits.tokens_per_minute, now)
        return state

    async def acquire(self, key: str, limits: Limits, tokens: int, request_id: str) -> LimitDecision:
        return self.check(key, limits, tokens, request_id)

    def check(self, key: str, limits: Limits, tokens: int, request_id: str) -> LimitDecision:
        now = self.clock()
        state = self._tenant(key, limits, now)
        if limits.concurrency is not None and len(state.leases) >= limits.concurrency:
            return LimitDecision(False, "concurrency", 1.0)
        if state.requests is not None and limits.requests_per_minute is not None and state.requests.level < 1:
            rate = limits.requests_per_minute / 60.0
            return LimitDecision(False, "requests_per_minute", (1 - state.requests.level) / rate)
        if state.tokens is not None and limits.tokens_per_minute is not None and state.tokens.level <= 0:
            rate = limits.tokens_per_minute / 60.0
            return LimitDecision(False, "tokens_per_minute", max(0.001, -state.tokens.level / rate))
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= tokens
        if limits.concurrency is not None:
            state.leases.add(request_id)
        return ALLOWED

    async def release(self, key: str, limits: Limits, request_id: str) -> None:
        state = self._state.get(key)
        if state is not None:
            state.leases.discard(request_id)

    async def settle(self, key: str, limits: Limits, reserved: int, actual: int) -> None:
        state = self._state.get(key)
        if state is None or state.tokens is None or limits.tokens_per_minute is None:
            return
        state.tokens.refill(limits.tokens_per_minute, self.clock())
        state.tokens.level = min(float(limits.tokens_per_minute), state.tokens.level + reserved - actual)


# KEYS[1] bucket hash, KEYS[2] lease zset; ARGV: rpm, tpm, concurrency (0 = none), tokens,
# request id, lease seconds. Returns {allowed, limit index, retry-after ms}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, lease = tonumber(ARGV[4]), tonumber(ARGV[6])
local function level(name, cap)
  local v = redis.call('HMGET', KEYS[1], name, name .. '_t')
  local l, u = tonumber(v[1]), tonumber(v[2])
  if l == nil then return cap end
  return math.min(cap, l + (now - u) * cap / 60)
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then return {0, 3, 1000} end
end
local r, k = 0, 0
if rpm > 0 then
  r = level('r', rpm)
  if r < 1 then return {0, 1, math.ceil((1 - r) * 60000 / rpm)} end
end
if tpm > 0 then
  k = level('k', tpm)
  if k <= 0 then return {0, 2, math.max(1, math.ceil(-k * 60000 / tpm))} end
end
if rpm > 0 then redis.call('HSET', KEYS[1], 'r', r - 1, 'r_t', now) end
if tpm > 0 then redis.call('HSET', KEYS[1], 'k', k - tokens, 'k_t', now) end
redis.call('EXPIRE', KEYS[1], 120)
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
  redis.call('EXPIRE', KEYS[2], math.ceil(lease) + 60)
end
return {1, 0, 0}
"""

# KEYS[1] bucket hash; ARGV: tpm, tokens to give back (reserved - actual, may be negative).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'k', 'k_t')
local l, u = tonumber(v[1]), tonumber(v[2])
if l == nil then return 0 end
l = math.min(cap, l + (now - u) * cap / 60)
redis.call('HSET', KEYS[1], 'k', math.min(cap, l + delta), 'k_t', now)
return 1
"""

_LIMIT_NAMES = {1: "requests_per_minute", 2: "tokens_per_minute", 3: "concurrency"}


class RedisLimiter:
    def __init__(
        self,
        url: str,
        fail_open: bool = True,
        prefix: str = "llm-extproc:limits:",
        lease_s: float = 600.0,
        timeout_s: float = 0.2,
    ) -> None:
        import redis.asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)
        self.fail_open = fail_open
        self.prefix = prefix
        self.lease_s = lease_s
        self.store_errors = 0
        self._last_warning = 0.0

    def _failed(self, error: Exception) -> None:
        self.store_errors += 1
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            action = "admitting" if self.fail_open else "rejecting"
            log.warning("limits: redis unreachable (%s); %s requests", error, action)

    async def acquire(self, key: str, limits: Limits, tokens: int, request_id: str) -> LimitDecision:
        args: list[int | float | str] = [
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            limits.concurrency or 0,
            max(0, tokens),
            request_id,
            self.lease_s,
        ]
        try:
            allowed, which, retry_ms = await self._acquire(
                keys=[self.prefix + key, self.prefix + key + ":leases"], args=args
            )
        except Exception as error:
            self._failed(error)
            return LimitDecision(self.fail_open, "" if self.fail_open else "store", 1.0, store_error=True)
        if allowed:
            return ALLOWED
        return LimitDecision(False, _LIMIT_NAMES.get(int(which), ""), int(retry_ms) / 1000.0)

    async def release(self, key: str, limits: Limits, request_id: str) -> None:
        if limits.concurrency is None:
            return
        try:
            await self._redis.zrem(self.prefix + key + ":leases", request_id)
        except Exception as error:
            self._failed(error)

    async def settle(self, key: str, limits: Limits, reserved: int, actual: int) -> None:
        if limits.tokens_per_minute is None or reserved == actual:
            return
        try:
            await self._settle(keys=[self.prefix + key], args=[limits.tokens_per_minute, reserved - actual])
        except Exception as error:
            self._failed(error)

    async def close(self) -> None:
        await self._redis.aclose()
