"""Response cache: exact-match keys per tenant, an in-process LRU bounded in bytes, and Redis.

The key is a hash of the tenant, the served model (after alias resolution) and every request
field that changes the answer, in canonical JSON, so field order and whitespace do not matter
and one tenant can never read another's entry. Only deterministic-enough requests get a key
(temperature 0, or a seed) unless the policy caches everything on a route.

Entries hold the response bytes exactly as the model server sent them (JSON, or the SSE
stream with its ``data: [DONE]``), so a hit replays the same chunk format. ``stream`` is part
of the key: a streamed request is answered only from a streamed response.

Cache failures never fail a request: Redis errors are counted and read as misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Request fields that can change the answer; anything else (user, metadata, stream_options,
# service hints) is left out of the key.
OUTPUT_FIELDS = (
    "messages",
    "prompt",
    "input",
    "suffix",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "echo",
    "best_of",
    "encoding_format",
    "dimensions",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    # Responses API, Anthropic Messages, rerank/score, tokenize/detokenize
    "instructions",
    "max_output_tokens",
    "text",
    "reasoning",
    "system",
    "stop_sequences",
    "thinking",
    "query",
    "documents",
    "top_n",
    "return_documents",
    "text_1",
    "text_2",
    "tokens",
    "add_special_tokens",
)


def deterministic(body: Mapping[str, Any]) -> bool:
    """Temperature 0 or a fixed seed, and a single choice: the same request, the same answer."""
    n = body.get("n", 1)
    if n not in (1, None):
        return False
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature", 1.0)  # OpenAI's default temperature is 1
    return isinstance(temperature, int | float) and temperature == 0


def cache_key(
    tenant: str | None, model: str, body: Mapping[str, Any], force: bool = False, api: str = ""
) -> str | None:
    """The entry's key, or None when the request should not be cached (``force``: cache anyway).

    ``api`` (the request's task) is part of the key: the same fields mean different answers on
    different paths (a completion and a tokenize of one prompt)."""
    if not force and not deterministic(body):
        return None
    material = {name: body[name] for name in OUTPUT_FIELDS if name in body}
    material["stream"] = bool(material.get("stream", False))
    canonical = json.dumps(
        [tenant or "", model, api, material], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.blake2b(canonical.encode(), digest_size=20).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    content_type: str
    body: bytes  # exactly as the model server sent it
    stored_at: float  # unix seconds
    expires_at: float  # unix seconds; past it the entry is stale (degraded mode may still use it)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.content_type) + 64

    def to_bytes(self) -> bytes:
        header = json.dumps([self.status, self.content_type, self.stored_at, self.expires_at]).encode()
        return header + b"\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedResponse:
        header, _, body = raw.partition(b"\n")
        status, content_type, stored_at, expires_at = json.loads(header)
        return cls(int(status), str(content_type), body, float(stored_at), float(expires_at))


class ResponseStore(Protocol):
    """``get`` returns an entry only while ``now < expires_at + stale_s`` (stale_s=0: fresh only)."""

    async def get(self, key: str, stale_s: float = 0.0) -> CachedResponse | None: ...

    async def put(self, key: str, entry: CachedResponse, keep_stale_s: float = 0.0) -> None: ...


class MemoryCache:
    """In-process LRU bounded by the bytes it holds (body + small overhead), not entry count."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[str, tuple[CachedResponse, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, stale_s: float = 0.0) -> CachedResponse | None:
        found = self._entries.get(key)
        if found is None:
            return None
        entry, keep_until = found
        now = self.clock()
        if now >= keep_until:
            self._drop(key)
            return None
        if now >= entry.expires_at + stale_s:
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: CachedResponse, keep_stale_s: float = 0.0) -> None:
        if entry.size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (entry, entry.expires_at + keep_stale_s)
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def _drop(self, key: str) -> None:
        entry, _ = self._entries.pop(key)
        self.bytes -= entry.size


class RedisCache:
    """Shared by every replica. Errors are logged (rate-limited), counted, and read as misses."""

    def __init__(self, url: str, prefix: str = "llm-extproc:cache:", timeout_s: float = 0.2) -> None:
        import redis.asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.prefix = prefix
        self.errors = 0
        self._last_warning = 0.0
        self.clock: Callable[[], float] = time.time

    def _failed(self, what: str, error: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning("response cache: redis %s failed (%s); serving without cache", what, error)

    async def get(self, key: str, stale_s: float = 0.0) -> CachedResponse | None:
        try:
            raw = await self._redis.get(self.prefix + key)
        except Exception as error:
            self._failed("get", error)
            return None
        if not isinstance(raw, bytes):
            return None
        try:
            entry = CachedResponse.from_bytes(raw)
        except (ValueError, TypeError) as error:
            self._failed("decode", error)
            return None
        return entry if self.clock() < entry.expires_at + stale_s else None

    async def put(self, key: str, entry: CachedResponse, keep_stale_s: float = 0.0) -> None:
        ttl_ms = int((entry.expires_at + keep_stale_s - self.clock()) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self._redis.set(self.prefix + key, entry.to_bytes(), px=ttl_ms)
        except Exception as error:
            self._failed("set", error)

    async def close(self) -> None:
        await self._redis.aclose()
