from __future__ import annotations

import json

import pytest

from extproc.errors import ErrorKind, RoutingError
from extproc.request import Task, estimate_tokens, parse_body, parse_headers

LIMIT = 4096


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def parse(task: Task, obj: object, content_type: str = "application/json"):  # type: ignore[no-untyped-def]
    return parse_body(task, content_type, body(obj), LIMIT)


def test_chat_extracts_routing_fields() -> None:
    req = parse(
        Task.CHAT,
        {
            "model": "llama-3-8b",
            "stream": True,
            "max_tokens": 64,
            "user": "u1",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "again"},
            ],
        },
    )
    assert (req.model, req.stream, req.max_tokens, req.user) == ("llama-3-8b", True, 64, "u1")
    assert req.text == "be brief\nhello\nhi\nagain"
    assert req.turns == 2 and req.has_system_prompt


def test_multimodal_content_keeps_text_parts_only_and_non_ascii() -> None:
    req = parse(
        Task.CHAT,
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "描述这张图片"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "text", "text": "Ünïcode ✓"},
                    ],
                }
            ],
        },
    )
    assert req.text == "描述这张图片\nÜnïcode ✓"
    assert "base64" not in req.text


def test_completion_and_embedding_prompts() -> None:
    assert parse(Task.COMPLETION, {"model": "m", "prompt": "abc"}).text == "abc"
    assert parse(Task.COMPLETION, {"model": "m", "prompt": ["a", "b"]}).text == "a\nb"
    assert parse(Task.COMPLETION, {"model": "m", "prompt": [1, 2, 3]}).text == ""
    assert parse(Task.EMBEDDING, {"model": "m", "input": "x"}).task is Task.EMBEDDING


def test_max_completion_tokens_is_accepted() -> None:
    req = parse(
        Task.CHAT, {"model": "m", "max_completion_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert req.max_tokens == 5


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "missing_model"),
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "missing_model"),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "missing_model"),
        ({"model": "m"}, "missing_messages"),
        ({"model": "m", "messages": []}, "missing_messages"),
        ({"model": "m", "messages": ["x"]}, "invalid_request"),
        ({"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}, "invalid_request"),
        ({"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}, "invalid_request"),
        (
            {"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]},
            "invalid_request",
        ),
        ([1, 2], "invalid_json"),
    ],
)
def test_invalid_chat_bodies_are_400(obj: object, code: str) -> None:
    with pytest.raises(RoutingError) as info:
        parse(Task.CHAT, obj)
    assert info.value.status == 400
    assert info.value.code == code


def test_invalid_json_and_bad_utf8_are_400() -> None:
    for raw in (b"{not json", b"\xff\xfe{", b"", b"[" * 100_000):
        with pytest.raises(RoutingError) as info:
            parse_body(Task.CHAT, "application/json", raw, 10**6)
        assert info.value.status == 400, raw[:10]


def test_wrong_content_type_is_415() -> None:
    with pytest.raises(RoutingError) as info:
        parse(Task.CHAT, {"model": "m"}, content_type="text/plain")
    assert info.value.status == 415
    assert parse(Task.EMBEDDING, {"model": "m", "input": "x"}, "application/json; charset=utf-8").model == "m"


def test_body_over_limit_is_413_with_sizes_in_message() -> None:
    with pytest.raises(RoutingError) as info:
        parse_body(Task.CHAT, "application/json", b" " * (LIMIT + 1), LIMIT)
    assert info.value.status == 413
    assert str(LIMIT) in info.value.message


def test_error_body_is_openai_style() -> None:
    error = RoutingError(ErrorKind.MODEL_NOT_FOUND, "model 'x' does not exist", "model_not_found")
    assert json.loads(error.body()) == {
        "error": {"message": "model 'x' does not exist", "type": "model_not_found", "code": "model_not_found"}
    }
    assert error.status == 404
    assert ("retry-after", "3") in RoutingError(ErrorKind.OVERLOADED, "busy", retry_after_s=2.6).headers()


def test_parse_headers_strips_routing_headers_and_joins_repeats() -> None:
    headers = parse_headers(
        [
            (":path", "/v1/chat/completions?x=1"),
            (":method", "POST"),
            ("content-type", "application/json"),
            ("x-gateway-destination-endpoint", "10.0.0.1:80"),
            ("x-gateway-destination-endpoint-fallback", "10.0.0.2:80"),
            ("x-llm-tier", "premium"),
            ("x-user-id", "a"),
            ("x-user-id", "b"),
        ]
    )
    assert headers.task is Task.CHAT
    assert headers.spoofed == [
        "x-gateway-destination-endpoint",
        "x-gateway-destination-endpoint-fallback",
        "x-llm-tier",
    ]
    assert "x-llm-tier" not in headers.headers
    assert headers.headers["x-user-id"] == "a,b"


def test_token_estimate_counts_cjk_denser_than_ascii() -> None:
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("中" * 100) == 100
