from __future__ import annotations

import json
import math

import pytest

from extproc.observe import MAX_OBSERVED_BYTES, Observation, ResponseObserver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sse(*events: object) -> bytes:
    out = b""
    for event in events:
        out += b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n"
    return out


def chat_chunk(content: str | None) -> dict[str, object]:
    delta = {"role": "assistant", "content": ""} if content is None else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


USAGE = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3},
}
STREAM = sse(chat_chunk(None), chat_chunk("a"), chat_chunk("b"), chat_chunk("c"), USAGE, b"[DONE]")


def observer(clock: Clock) -> ResponseObserver:
    return ResponseObserver(Observation(endpoint="10.0.0.1:8000"), clock, clock())


@pytest.mark.parametrize("split", [1, 2, 7, 13, 64, len(STREAM)])
def test_stream_usage_and_counts_survive_any_chunk_boundaries(split: int) -> None:
    clock = Clock()
    watched = observer(clock)
    watched.on_headers(200, "text/event-stream; charset=utf-8")
    for start in range(0, len(STREAM), split):
        clock.now += 0.01
        watched.on_body(STREAM[start : start + split])
    result = watched.finish()
    assert result.streamed and result.status == 200
    assert result.usage is not None and result.usage.from_usage
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 3)


def test_ttft_and_time_per_token_come_from_text_events_not_the_role_chunk() -> None:
    clock = Clock()
    watched = observer(clock)
    watched.on_headers(200, "text/event-stream")
    clock.now += 0.5
    watched.on_body(sse(chat_chunk(None)))  # role only: no token yet
    clock.now += 0.25
    watched.on_body(sse(chat_chunk("first")))
    for _ in range(4):
        clock.now += 0.1
        watched.on_body(sse(chat_chunk("more")))
    clock.now += 0.05
    result = watched.finish()
    assert result.ttft_s == pytest.approx(0.75)
    assert result.time_per_output_token_s == pytest.approx(0.1)
    assert result.duration_s == pytest.approx(1.2)
    # No usage chunk: completion tokens are the text events counted.
    assert result.usage is not None and not result.usage.from_usage
    assert result.usage.completion_tokens == 5 and result.usage.prompt_tokens is None


def test_completions_text_and_crlf_events_are_counted() -> None:
    clock = Clock()
    watched = observer(clock)
    watched.on_headers(200, "text/event-stream")
    body = sse({"choices": [{"text": "x"}]}, {"choices": [{"text": "y"}]}, b"[DONE]").replace(b"\n", b"\r\n")
    watched.on_body(body[:9])
    watched.on_body(body[9:])
    assert watched.finish().usage.completion_tokens == 2  # type: ignore[union-attr]


def test_non_streaming_usage_is_read_from_the_json_body() -> None:
    clock = Clock()
    watched = observer(clock)
    watched.on_headers(200, "application/json")
    body = json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": USAGE["usage"]}).encode()
    watched.on_body(body[:10])
    watched.on_body(body[10:])
    result = watched.finish()
    assert not result.streamed and math.isnan(result.ttft_s)
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_garbage_and_oversized_bodies_are_ignored_not_fatal() -> None:
    clock = Clock()
    watched = observer(clock)
    watched.on_headers(502, "application/json")
    watched.on_body(b"\xff\xfe not json")
    assert watched.finish().usage is None
    big = observer(clock)
    big.on_headers(200, "application/json")
    big.on_body(b"{" + b" " * MAX_OBSERVED_BYTES)
    big.on_body(b'"usage": {"completion_tokens": 1}}')
    assert big.finish().usage is None
    stream = observer(clock)
    stream.on_headers(200, "text/event-stream")
    stream.on_body(b"data: {not json}\n\ndata: [1, 2]\n\n: comment\n\n")
    assert stream.finish().usage is None


def event(name: str, payload: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"


def watch(raw: bytes, content_type: str, clock: Clock, split: int = 17) -> Observation:
    watched = observer(clock)
    watched.on_headers(200, content_type)
    for start in range(0, len(raw), split):
        clock.now += 0.01
        watched.on_body(raw[start : start + split])
    return watched.finish()


RESPONSE = {"id": "resp_abc", "object": "response", "status": "in_progress", "output": []}
RESPONSES_STREAM = (
    event("response.created", {"type": "response.created", "sequence_number": 0, "response": RESPONSE})
    + event("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hel"})
    + event("response.output_text.delta", {"type": "response.output_text.delta", "delta": "lo"})
    + event("response.output_text.done", {"type": "response.output_text.done", "text": "Hello"})
    + event(
        "response.completed",
        {
            "type": "response.completed",
            "response": {**RESPONSE, "status": "completed", "usage": {"input_tokens": 7, "output_tokens": 2}},
        },
    )
)
MESSAGES_STREAM = (
    event(
        "message_start",
        {
            "type": "message_start",
            "message": {"id": "msg_1", "usage": {"input_tokens": 12, "output_tokens": 0}},
        },
    )
    + event(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    )
    + event(
        "content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "a"}}
    )
    + event("ping", {"type": "ping"})
    + event(
        "content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "b"}}
    )
    + event(
        "content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "c"}}
    )
    + event("content_block_stop", {"type": "content_block_stop", "index": 0})
    + event("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}})
    + event("message_stop", {"type": "message_stop"})
)


def test_responses_stream_usage_ttft_and_response_id() -> None:
    clock = Clock()
    result = watch(RESPONSES_STREAM, "text/event-stream", clock)
    assert result.usage is not None and result.usage.from_usage
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (7, 2)
    assert result.response_id == "resp_abc"
    # The first text delta, not response.created, is the first token.
    assert 0 < result.ttft_s < result.duration_s


def test_anthropic_stream_takes_input_from_message_start_and_output_from_message_delta() -> None:
    clock = Clock()
    result = watch(MESSAGES_STREAM, "text/event-stream", clock, split=5)
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (12, 3)
    assert result.response_id == ""
    assert not math.isnan(result.time_per_output_token_s)


def test_responses_and_messages_json_bodies_give_usage() -> None:
    responses = watch(
        json.dumps({**RESPONSE, "usage": {"input_tokens": 5, "output_tokens": 4}}).encode(),
        "application/json",
        Clock(),
    )
    assert responses.usage is not None and (
        responses.usage.prompt_tokens,
        responses.usage.completion_tokens,
    ) == (5, 4)
    assert responses.response_id == "resp_abc"
    message = watch(
        json.dumps(
            {"id": "msg_1", "type": "message", "usage": {"input_tokens": 3, "output_tokens": 8}}
        ).encode(),
        "application/json",
        Clock(),
    )
    assert message.usage is not None and (message.usage.prompt_tokens, message.usage.completion_tokens) == (
        3,
        8,
    )
    assert message.response_id == ""


def test_rerank_usage_has_only_a_total_which_is_all_input() -> None:
    result = watch(
        json.dumps({"id": "rerank-1", "usage": {"total_tokens": 9}, "results": []}).encode(),
        "application/json",
        Clock(),
    )
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        9,
        None,
    )
