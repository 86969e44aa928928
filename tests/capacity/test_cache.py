from __future__ import annotations

import json

import pytest

from extproc.capacity.cache import CachedResponse, MemoryCache, cache_key


def chat(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, **extra}


def test_key_ignores_field_order_whitespace_and_fields_that_do_not_change_the_answer() -> None:
    base = cache_key("acme", "m", chat())
    assert base is not None
    reordered = json.loads(
        '{"temperature": 0,   "messages": [{"content": "hi", "role": "user"}], "model": "m"}'
    )
    assert cache_key("acme", "m", reordered) == base
    assert cache_key("acme", "m", chat(user="u1", metadata={"a": 1}, stream_options={"x": 1})) == base
    # What changes the answer changes the key.
    assert cache_key("acme", "m", chat(max_tokens=5)) != base
    assert cache_key("acme", "m", chat(tools=[{"type": "function"}])) != base
    assert cache_key("acme", "m", chat(stream=True)) != base
    assert cache_key("acme", "m2", chat()) != base  # the served model, after alias resolution


def test_tenants_never_share_entries() -> None:
    assert cache_key("acme", "m", chat()) != cache_key("globex", "m", chat())
    assert cache_key(None, "m", chat()) != cache_key("acme", "m", chat())


def test_only_deterministic_requests_get_a_key_unless_forced() -> None:
    assert cache_key("t", "m", {"messages": []}) is None  # OpenAI's default temperature is 1
    assert cache_key("t", "m", chat(temperature=0.7)) is None
    assert cache_key("t", "m", chat(temperature=0.7, seed=3)) is not None
    assert cache_key("t", "m", chat(n=2)) is None
    assert cache_key("t", "m", chat(temperature=0.7), force=True) is not None


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(body: bytes, clock: Clock, ttl: float = 10.0) -> CachedResponse:
    return CachedResponse(200, "application/json", body, clock.now, clock.now + ttl)


async def test_ttl_and_stale_reads() -> None:
    clock = Clock()
    cache = MemoryCache(1 << 20, clock=clock)
    await cache.put("k", entry(b"{}", clock), keep_stale_s=100)
    assert await cache.get("k") is not None
    clock.now += 11
    assert await cache.get("k") is None  # expired for normal use
    assert await cache.get("k", stale_s=100) is not None  # degraded mode may still use it
    clock.now += 100
    assert await cache.get("k", stale_s=1000) is None and len(cache) == 0  # kept no longer


async def test_eviction_is_bounded_in_bytes_least_recently_used_first() -> None:
    clock = Clock()
    one = entry(b"x" * 1000, clock)
    cache = MemoryCache(max_bytes=3 * one.size, clock=clock)
    for key in "abc":
        await cache.put(key, one)
    assert await cache.get("a") is not None  # a is now the most recently used
    await cache.put("d", one)
    assert await cache.get("b") is None and await cache.get("a") is not None
    assert cache.bytes <= cache.max_bytes and cache.evictions == 1
    await cache.put("huge", entry(b"x" * (4 * one.size), clock))  # bigger than the cache: skipped
    assert await cache.get("huge") is None and len(cache) == 3


@pytest.mark.parametrize("body", [b"", b"data: {}\n\ndata: [DONE]\n\n", "é\n".encode()])
def test_entries_round_trip_through_bytes(body: bytes) -> None:
    original = CachedResponse(200, "text/event-stream", body, 1.5, 9.5)
    assert CachedResponse.from_bytes(original.to_bytes()) == original


def test_key_separates_apis_and_their_prompt_fields() -> None:
    prompt = {"prompt": "abc", "temperature": 0}
    assert cache_key("t", "m", prompt, api="completion") != cache_key("t", "m", prompt, api="tokenize")
    messages = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    # Anthropic's system prompt and the Responses API's instructions change the answer.
    assert cache_key("t", "m", {**messages, "system": "a"}, api="messages") != cache_key(
        "t", "m", {**messages, "system": "b"}, api="messages"
    )
    responses = {"input": "hi", "temperature": 0}
    assert cache_key("t", "m", {**responses, "instructions": "a"}, api="responses") != cache_key(
        "t", "m", responses, api="responses"
    )
    rerank = {"query": "q", "documents": ["a"], "seed": 1}
    assert cache_key("t", "m", rerank, api="rerank") != cache_key(
        "t", "m", {**rerank, "documents": ["b"]}, api="rerank"
    )
