"""Token usage and latency read from responses as they pass, without holding them.

A second ext_proc filter in Envoy's ``observability_mode`` streams the response body to us
asynchronously: Envoy forwards every chunk to the client without waiting for our reply, so the
token stream never waits on Python. Each chunk is scanned for complete SSE events; only those
are parsed, and only a bounded tail of bytes is kept between chunks.

What is measured per response:
- TTFT: from Envoy's receipt of the request (its ``request.time`` attribute, so a busy Python
  process that reads the request headers late does not shorten it) to the first event carrying
  generated text: what the client waited, decision included;
- time per output token: (last text event - first text event) / (text events - 1);
- prompt/completion tokens from a ``usage`` object (the final SSE chunk when
  ``stream_options.include_usage`` is on, or the JSON body of a non-streaming response); when a
  stream carries no usage, completion tokens are the number of text events, which is exact
  for servers that send one token per event (vLLM's default) and an undercount otherwise.

Each API's own stream format is understood: OpenAI chat/completions chunks (``choices[].delta``),
Responses API typed events (``response.output_text.delta``; usage in ``response.completed``),
Anthropic Messages events (``content_block_delta``; input tokens in ``message_start``, output
tokens in ``message_delta``). A Responses API answer's id is kept, for session affinity.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Largest non-streaming body (or single SSE event) we parse for usage; beyond it we only time.
MAX_OBSERVED_BYTES = 1 << 20


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    from_usage: bool = False  # counts reported by the server, not counted by us


@dataclass(slots=True)
class Observation:
    """What one response showed; times are seconds on the observer's clock."""

    endpoint: str = ""
    model: str = ""
    pool: str = ""
    tier: str = ""
    tenant: str = ""
    request_id: str = ""
    status: int = 0
    streamed: bool = False
    ttft_s: float = math.nan
    time_per_output_token_s: float = math.nan
    duration_s: float = math.nan
    usage: Usage | None = None
    response_id: str = ""  # a Responses API answer's id (resp_...)


@dataclass(frozen=True, slots=True)
class ResponseBatch:
    """Non-streamed responses with the same labels, as arrays (the Wasm filter's groups): no
    time to first token or per output token; token counts below 0 were not reported."""

    model: str
    pool: str
    status: int
    duration_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64]
    completion_tokens: npt.NDArray[np.int64]


# Typed stream events that carry generated tokens (Responses API, Anthropic Messages).
_TEXT_EVENT_TYPES = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
        "content_block_delta",
    }
)


def _text_of(event: dict[str, Any]) -> bool:
    """True when a stream event carries generated text, in any API's stream format."""
    kind = event.get("type")
    if isinstance(kind, str):
        return kind in _TEXT_EVENT_TYPES and bool(event.get("delta"))
    choices = event.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            return True
        if choice.get("text"):
            return True
    return False


def _count(usage: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _usage_of(payload: Any, before: Usage | None = None) -> Usage | None:
    """Usage from a body or stream event: top level (OpenAI, Anthropic bodies and
    ``message_delta``), or inside ``response`` (Responses events) or ``message`` (Anthropic
    ``message_start``). OpenAI names prompt/completion tokens, the others input/output tokens.
    A count the event lacks keeps its value from ``before`` (message_delta has no input count)."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        inner = payload.get("response", payload.get("message"))
        usage = inner.get("usage") if isinstance(inner, dict) else None
        if not isinstance(usage, dict):
            return None
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    completion = _count(usage, "completion_tokens", "output_tokens")
    if prompt is None and completion is None:
        prompt = _count(usage, "total_tokens")  # rerank: nothing generated, all of it is input
    if before is not None and before.from_usage:
        prompt = before.prompt_tokens if prompt is None else prompt
        completion = before.completion_tokens if completion is None else completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, from_usage=True)


def _response_id_of(payload: dict[str, Any]) -> str:
    """The id of a Responses API answer: the body itself, or the ``response`` of an event."""
    response = payload if payload.get("object") == "response" else payload.get("response")
    if isinstance(response, dict) and response.get("object") == "response":
        found = response.get("id")
        if isinstance(found, str):
            return found
    return ""


class ResponseObserver:
    """Follows one response: headers, then body chunks in order, then ``finish``."""

    __slots__ = (
        "_clock",
        "_first_text",
        "_keep_limit",
        "_kept",
        "_last_text",
        "_overflow",
        "_tail",
        "_text_events",
        "observation",
        "started",
    )

    def __init__(
        self, observation: Observation, clock: Callable[[], float], started: float, keep_bytes: int = 0
    ) -> None:
        """``keep_bytes``: also keep the whole body up to this size (for the response cache)."""
        self.observation = observation
        self._clock = clock
        self.started = started
        self._keep_limit = keep_bytes
        self._kept: bytearray | None = bytearray() if keep_bytes > 0 else None
        self._tail = b""
        self._overflow = False
        self._text_events = 0
        self._first_text = math.nan
        self._last_text = math.nan

    def on_headers(self, status: int, content_type: str) -> None:
        self.observation.status = status
        self.observation.streamed = content_type.startswith("text/event-stream")

    def kept_body(self) -> bytes | None:
        """The whole body, if it was kept and stayed within the limit."""
        return bytes(self._kept) if self._kept is not None else None

    def on_body(self, chunk: bytes) -> None:
        if not chunk:
            return
        kept = self._kept
        if kept is not None:
            if len(kept) + len(chunk) > self._keep_limit:
                self._kept = None
            else:
                kept += chunk
        if not self.observation.streamed:
            if self._overflow:
                return
            if len(self._tail) + len(chunk) > MAX_OBSERVED_BYTES:
                self._overflow, self._tail = True, b""
                return
            self._tail += chunk
            return
        data = self._tail + chunk if self._tail else chunk
        # SSE events end with a blank line; servers use \n\n, some proxies \r\n\r\n.
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._tail = data if len(data) <= MAX_OBSERVED_BYTES else b""
            return
        self._tail = data[end + 2 :]
        now = self._clock()
        for event in data[:end].split(b"\n\n"):
            self._on_event(event, now)

    def _on_event(self, event: bytes, now: float) -> None:
        payload = b""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payload += line[5:].lstrip(b" ")
        if not payload or payload == b"[DONE]":
            return
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        if _text_of(parsed):
            self._text_events += 1
            if self._text_events == 1:
                self._first_text = now
            self._last_text = now
        usage = _usage_of(parsed, self.observation.usage)
        if usage is not None:
            self.observation.usage = usage
        if not self.observation.response_id:
            self.observation.response_id = _response_id_of(parsed)

    def finish(self) -> Observation:
        observation = self.observation
        now = self._clock()
        observation.duration_s = now - self.started
        if observation.streamed:
            if self._tail:
                self._on_event(self._tail, now)
                self._tail = b""
            if self._text_events:
                observation.ttft_s = self._first_text - self.started
            if self._text_events > 1:
                observation.time_per_output_token_s = (self._last_text - self._first_text) / (
                    self._text_events - 1
                )
            if observation.usage is None and self._text_events:
                observation.usage = Usage(completion_tokens=self._text_events)
        elif self._tail and not self._overflow:
            with contextlib.suppress(ValueError):
                body = json.loads(self._tail)
                observation.usage = _usage_of(body)
                if isinstance(body, dict):
                    observation.response_id = _response_id_of(body)
            self._tail = b""
        return observation
