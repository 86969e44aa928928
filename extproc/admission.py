"""Capacity protection on the request path: tenant limits, response cache, degraded answers.

The server calls ``admit`` after the routing decision and before Envoy sends the request
upstream. Limits are checked first (a tenant over budget gets 429 + retry-after, or is
downgraded to the policy's cheaper model), then the response cache (a hit is answered by
ext_proc itself, the upstream never sees the request). Misses are remembered by request id
so that the observation stream (extproc.observe) can store the response once it has passed,
and so that the real token usage can settle the tenant's token budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from extproc.capacity.cache import CachedResponse, ResponseStore, cache_key
from extproc.capacity.limits import Limiter
from extproc.errors import ErrorKind, RoutingError
from extproc.headers import CACHE_HEADER
from extproc.observability.metrics import Metrics
from extproc.observe import Observation
from extproc.policy.schema import Cache, Limits
from extproc.policy.types import PolicyDecision, Target
from extproc.request import ParsedRequest
from extproc.router import Decision

log = logging.getLogger(__name__)

# Tokens reserved for the answer when a request gives no max_tokens (settled later anyway).
DEFAULT_ANSWER_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    limits: Limits
    request_id: str
    reserved_tokens: int


@dataclass(frozen=True, slots=True)
class PendingStore:
    key: str
    cache: Cache


@dataclass(slots=True)
class Admission:
    """What ``admit`` decided: a cached answer to send, or go upstream (maybe downgraded)."""

    answer: CachedResponse | None = None
    cache_status: str = ""  # "hit", "miss", "stale" or "" (not cacheable / no cache)
    lease: Lease | None = None
    downgraded: bool = False


class _Bounded(OrderedDict[str, Any]):
    """Request id -> item, oldest dropped first past ``limit`` (responses that never ended)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, key: str, value: Any) -> None:
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)


class Capacity:
    def __init__(
        self,
        cache: ResponseStore | None = None,
        limiter: Limiter | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = 100_000,
    ) -> None:
        self.cache = cache
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock
        self._stores = _Bounded(max_pending)
        self._settles = _Bounded(max_pending)
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- request path ---------------------------------------------------------------------------
    async def admit(
        self,
        request_id: str,
        request: ParsedRequest,
        decision: Decision,
        redecide: Callable[[Target], Decision],
    ) -> tuple[Decision, Admission]:
        """Limits, then cache. ``redecide(target)`` routes again to a downgrade target.
        Raises RoutingError(RATE_LIMITED) when the tenant is over a limit and not downgraded."""
        admission = Admission()
        limits: Limits | None = decision.limits
        if limits is not None and self.limiter is not None and decision.tenant is not None:
            key = f"{decision.tenant}:{decision.model}" if limits.per_model else decision.tenant
            tokens = request.estimated_prompt_tokens + (request.max_tokens or DEFAULT_ANSWER_TOKENS)
            verdict = await self.limiter.acquire(key, limits, tokens, request_id)
            if verdict.allowed:
                admission.lease = Lease(key, limits, request_id, tokens)
                if limits.tokens_per_minute is not None and request_id:
                    self._settles.add(request_id, admission.lease)
            elif limits.over_limit == "downgrade" and decision.downgrade is not None:
                self._count_limited(verdict.limit, "downgrade")
                decision = redecide(decision.downgrade)
                admission.downgraded = True
            else:
                self._count_limited(verdict.limit, "reject")
                raise RoutingError(
                    ErrorKind.RATE_LIMITED,
                    f"tenant {decision.tenant!r} is over its {verdict.limit.replace('_', ' ')} limit; "
                    f"retry after {max(1, round(verdict.retry_after_s))} s",
                    "rate_limit_exceeded",
                    retry_after_s=verdict.retry_after_s,
                )
        cache: Cache | None = decision.cache
        if cache is not None and self.cache is not None:
            entry_key = cache_key(
                decision.tenant,
                decision.model,
                request.body,
                force=cache.cache_nondeterministic,
                api=request.task.value,
            )
            if entry_key is not None:
                entry = await self.cache.get(entry_key)
                if entry is not None:
                    admission.answer, admission.cache_status = entry, "hit"
                else:
                    admission.cache_status = "miss"
                    if request_id:
                        self._stores.add(request_id, PendingStore(entry_key, cache))
                self._count_cache(admission.cache_status)
        return decision, admission

    async def degraded_answer(
        self, request: ParsedRequest, verdict: PolicyDecision | None, error: RoutingError
    ) -> CachedResponse | None:
        """Every model of the chain is down or shedding: a cached answer, even stale, if allowed."""
        if (
            self.cache is None
            or verdict is None
            or not request.cacheable  # stateful (Responses) or an upload: no stored answer fits
            or error.kind not in (ErrorKind.NO_CAPACITY, ErrorKind.OVERLOADED)
        ):
            return None
        cache: Cache | None = getattr(verdict, "cache", None)
        if cache is None or not cache.serve_stale_on_failure:
            return None
        for target in verdict.targets:
            key = cache_key(
                verdict.tenant,
                target.model,
                request.body,
                force=cache.cache_nondeterministic,
                api=request.task.value,
            )
            if key is None:
                return None
            entry = await self.cache.get(key, stale_s=cache.stale_ttl_s)
            if entry is not None:
                self._count_cache("stale")
                return entry
        return None

    def release(self, lease: Lease | None) -> None:
        """The request is over (answered, failed or reset): give back its concurrency lease."""
        if lease is not None and lease.limits.concurrency is not None and self.limiter is not None:
            self._background(self.limiter.release(lease.key, lease.limits, lease.request_id))

    # -- response side (observation stream) ------------------------------------------------------
    def keep_bytes_for(self, request_id: str) -> int:
        """How much of this response to keep for the cache (0: nothing is pending)."""
        pending: PendingStore | None = self._stores.get(request_id)
        return pending.cache.max_entry_bytes if pending is not None else 0

    def observed(self, observation: Observation, body: bytes | None) -> None:
        self.store(observation, body)
        self.settle(observation)

    def store(self, observation: Observation, body: bytes | None) -> None:
        """The response of a cache miss passed whole: it answers the next identical request."""
        pending: PendingStore | None = self._stores.pop(observation.request_id, None)
        if (
            pending is not None
            and body is not None
            and self.cache is not None
            and _complete(observation, body)
        ):
            now = self.clock()
            content_type = "text/event-stream" if observation.streamed else "application/json"
            entry = CachedResponse(observation.status, content_type, body, now, now + pending.cache.ttl_s)
            keep = pending.cache.stale_ttl_s if pending.cache.serve_stale_on_failure else 0.0
            self._background(self.cache.put(pending.key, entry, keep_stale_s=keep))
            if self.metrics is not None:
                self.metrics.cache_stores.inc()

    def settle(self, observation: Observation) -> None:
        """The response's real token usage corrects its tenant's token budget."""
        lease: Lease | None = self._settles.pop(observation.request_id, None)
        usage = observation.usage
        if lease is not None and usage is not None and self.limiter is not None:
            actual = (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)
            if actual:
                self._background(self.limiter.settle(lease.key, lease.limits, lease.reserved_tokens, actual))

    # -- helpers ----------------------------------------------------------------------------------
    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("capacity background task failed: %s", task.exception())

    async def drain(self) -> None:
        """Wait for background stores/settles (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _count_cache(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_lookups.labels(result).inc()

    def _count_limited(self, limit: str, action: str) -> None:
        if self.metrics is not None:
            self.metrics.limited.labels(limit or "store", action).inc()


def _complete(observation: Observation, body: bytes) -> bool:
    """Only whole, successful answers are stored: 200, and a stream that reached [DONE]."""
    if observation.status != 200 or not body:
        return False
    if observation.streamed:
        return body.rstrip().endswith(b"data: [DONE]")
    return True


def answer_headers(entry: CachedResponse, status: str) -> list[tuple[str, str]]:
    return [("content-type", entry.content_type), (CACHE_HEADER, status)]
