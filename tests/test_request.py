from __future__ import annotations

import json

import pytest

from extproc.errors import ErrorKind, ErrorShape, RoutingError
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


def form(fields: list[tuple[str, str | bytes]], boundary: str = "b0und") -> tuple[str, bytes]:
    """A multipart/form-data body; bytes values are sent as a file part."""
    out = b""
    for name, value in fields:
        if isinstance(value, bytes):
            out += (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="a.wav"\r\n'
                    "Content-Type: audio/wav\r\n\r\n"
                ).encode()
                + value
                + b"\r\n"
            )
        else:
            out += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            )
    return f"multipart/form-data; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


def test_every_vllm_api_path_maps_to_its_task() -> None:
    for path, task in {
        "/v1/responses": Task.RESPONSES,
        "/v1/messages": Task.MESSAGES,
        "/v1/messages/count_tokens": Task.COUNT_TOKENS,
        "/v1/rerank": Task.RERANK,
        "/rerank": Task.RERANK,
        "/v1/score": Task.SCORE,
        "/tokenize": Task.TOKENIZE,
        "/detokenize": Task.DETOKENIZE,
        "/v1/audio/transcriptions": Task.TRANSCRIPTION,
        "/v1/audio/translations": Task.TRANSLATION,
    }.items():
        assert parse_headers([(":path", path + "?a=1")]).task is task, path


def test_responses_input_string_items_instructions_and_previous_response() -> None:
    plain = parse(Task.RESPONSES, {"model": "m", "input": "hello", "max_output_tokens": 9})
    assert (plain.text, plain.turns, plain.max_tokens, plain.has_system_prompt) == ("hello", 1, 9, False)
    items = parse(
        Task.RESPONSES,
        {
            "model": "m",
            "instructions": "be brief",
            "previous_response_id": "resp_1",
            "stream": True,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"type": "function_call_output", "call_id": "c", "output": "42"},
                {"role": "user", "content": "second"},
            ],
        },
    )
    assert items.text == "be brief\nfirst\nok\n42\nsecond"
    assert (items.turns, items.has_system_prompt, items.stream) == (2, True, True)
    assert items.previous_response_id == "resp_1"
    assert not items.cacheable


def test_anthropic_messages_system_blocks_and_required_max_tokens() -> None:
    req = parse(
        Task.MESSAGES,
        {
            "model": "m",
            "max_tokens": 16,
            "system": [{"type": "text", "text": "you are terse"}],
            "metadata": {"user_id": "u7"},
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": {}}],
                },
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "more"},
            ],
        },
    )
    assert (req.text, req.turns, req.max_tokens, req.user) == ("you are terse\nhi\nhello\nmore", 2, 16, "u7")
    assert req.has_system_prompt
    with pytest.raises(RoutingError) as info:
        parse(Task.MESSAGES, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert info.value.code == "missing_max_tokens"
    # Token counting takes the same body without max_tokens.
    counted = parse(
        Task.COUNT_TOKENS, {"model": "m", "system": "s", "messages": [{"role": "user", "content": "x"}]}
    )
    assert (counted.text, counted.max_tokens, counted.has_system_prompt) == ("s\nx", None, True)


def test_rerank_score_tokenize_detokenize_bodies() -> None:
    rerank = parse(Task.RERANK, {"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1})
    assert rerank.text == "q\na\nb"
    assert parse(Task.SCORE, {"model": "m", "text_1": "a", "text_2": ["b", "c"]}).text == "a\nb\nc"
    assert parse(Task.TOKENIZE, {"model": "m", "prompt": "abc"}).text == "abc"
    chat_tokenize = parse(Task.TOKENIZE, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert chat_tokenize.text == "hi" and chat_tokenize.turns == 1
    assert parse(Task.DETOKENIZE, {"model": "m", "tokens": [1, 2]}).text == ""
    for task, obj, code in [
        (Task.RERANK, {"model": "m", "documents": ["a"]}, "missing_query"),
        (Task.RERANK, {"model": "m", "query": "q"}, "missing_documents"),
        (Task.RERANK, {"model": "m", "query": "q", "documents": [3]}, "invalid_request"),
        (Task.SCORE, {"model": "m", "text_1": "a"}, "missing_text_2"),
        (Task.TOKENIZE, {"model": "m"}, "missing_prompt"),
        (Task.DETOKENIZE, {"model": "m", "tokens": ["x"]}, "missing_tokens"),
        (Task.RESPONSES, {"model": "m"}, "missing_input"),
        (Task.RESPONSES, {"model": "m", "input": 3}, "invalid_request"),
        (Task.RESPONSES, {"model": "m", "input": "x", "previous_response_id": 5}, "invalid_request"),
    ]:
        with pytest.raises(RoutingError) as info:
            parse(task, obj)
        assert (info.value.status, info.value.code) == (400, code), (task, obj)


def test_transcription_form_routes_on_model_and_skips_the_file() -> None:
    content_type, raw = form(
        [
            ("model", "whisper"),
            ("prompt", "names: Ada"),
            ("stream", "true"),
            ("file", b"RIFF" + b"\x00" * 5000),
        ]
    )
    req = parse_body(Task.TRANSCRIPTION, content_type, raw, LIMIT * 4)
    assert (req.model, req.text, req.stream, req.body) == ("whisper", "names: Ada", True, {})
    assert not req.rewritable and not req.cacheable


def test_transcription_head_of_a_large_upload_is_enough_when_model_comes_first() -> None:
    content_type, raw = form([("model", "whisper"), ("file", b"\x01" * 100_000)])
    head = raw[:LIMIT]
    assert parse_body(Task.TRANSCRIPTION, content_type, head, LIMIT, complete=False).model == "whisper"
    # The same head, read as a whole body, is a truncated form.
    with pytest.raises(RoutingError) as truncated:
        parse_body(Task.TRANSCRIPTION, content_type, head, LIMIT)
    assert truncated.value.code == "invalid_multipart"
    late_type, late = form([("file", b"\x01" * 100_000), ("model", "whisper")])
    with pytest.raises(RoutingError) as info:
        parse_body(Task.TRANSCRIPTION, late_type, late[:LIMIT], LIMIT, complete=False)
    assert info.value.code == "missing_model" and "before the file" in info.value.message


def test_transcription_rejects_json_missing_boundary_and_huge_fields() -> None:
    with pytest.raises(RoutingError) as json_body:
        parse_body(Task.TRANSCRIPTION, "application/json", b'{"model": "w"}', LIMIT)
    assert json_body.value.status == 415
    with pytest.raises(RoutingError) as no_boundary:
        parse_body(Task.TRANSCRIPTION, "multipart/form-data", b"--x\r\n", LIMIT)
    assert no_boundary.value.code == "invalid_multipart"
    content_type, raw = form([("model", "w"), ("prompt", "p" * 70_000)])
    with pytest.raises(RoutingError) as huge:
        parse_body(Task.TRANSCRIPTION, content_type, raw, 10**6)
    assert huge.value.status == 400 and "prompt" in huge.value.message


def test_anthropic_error_shape() -> None:
    error = RoutingError(ErrorKind.NO_CAPACITY, "no healthy endpoint", "no_healthy_endpoint")
    assert json.loads(error.body(ErrorShape.ANTHROPIC)) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "no healthy endpoint"},
    }
    # Every kind has an Anthropic type.
    for kind in ErrorKind:
        assert json.loads(RoutingError(kind, "x").body(ErrorShape.ANTHROPIC))["error"]["type"]


def test_policy_task_names_are_the_routed_apis() -> None:
    import typing

    from extproc.policy.schema import Task as PolicyTask

    assert set(typing.get_args(PolicyTask)) == {t.value for t in Task} - {"models"}


def test_form_head_locates_the_model_value_for_renaming() -> None:
    content_type, raw = form(
        [("language", "en"), ("model", "whisper"), ("file", b'name="model"\r\n\r\nwhisper')]
    )
    req = parse_body(Task.TRANSCRIPTION, content_type, raw, LIMIT)
    assert req.form is not None and req.form.complete
    renamed = req.form.with_model("whisper-large-v3")
    again = parse_body(Task.TRANSCRIPTION, content_type, renamed, LIMIT)
    assert again.model == "whisper-large-v3"
    assert renamed.endswith(raw[raw.index(b'--b0und\r\nContent-Disposition: form-data; name="file"') :])
    head = parse_body(Task.TRANSCRIPTION, content_type, raw[:150], LIMIT, complete=False)
    assert head.form is not None and not head.form.complete
