"""Degraded mode (every model down): which requests may be answered from the cache."""

from __future__ import annotations

import time

from extproc.admission import Capacity
from extproc.capacity.cache import CachedResponse, MemoryCache, cache_key
from extproc.errors import ErrorKind, RoutingError
from extproc.policy.schema import Cache
from extproc.policy.types import PolicyDecision, Target
from extproc.request import ParsedRequest, Task

DOWN = RoutingError(ErrorKind.NO_CAPACITY, "no healthy endpoint")
VERDICT = PolicyDecision(
    rule="r",
    tenant="t",
    tier="standard",
    priority=0,
    targets=(Target("", "m"),),
    headers=(),
    cache=Cache(cache_nondeterministic=True),
)


async def stored(task: Task, body: dict[str, object]) -> Capacity:
    store = MemoryCache()
    key = cache_key("t", "m", body, force=True, api=task.value)
    assert key is not None
    now = time.time()
    await store.put(key, CachedResponse(200, "application/json", b"{}", now, now + 60))
    return Capacity(cache=store)


async def test_a_stored_answer_is_served_when_every_model_is_down() -> None:
    body = {"model": "m", "input": "x"}
    capacity = await stored(Task.EMBEDDING, body)
    request = ParsedRequest(Task.EMBEDDING, "m", body, "x")
    assert await capacity.degraded_answer(request, VERDICT, DOWN) is not None


async def test_stateful_responses_and_uploads_are_never_answered_from_the_cache() -> None:
    for task, body in [(Task.RESPONSES, {"model": "m", "input": "x"}), (Task.TRANSCRIPTION, {})]:
        capacity = await stored(task, body)
        request = ParsedRequest(task, "m", body, "x")
        assert await capacity.degraded_answer(request, VERDICT, DOWN) is None, task
