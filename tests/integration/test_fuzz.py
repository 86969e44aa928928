"""Fuzzing: ext_proc messages straight to the processor, and HTTP requests through real Envoy.

Whatever arrives, the answer is a routing decision or a 4xx with an OpenAI-style JSON error:
never an exception, never a 5xx of ours. CI runs a sample; LLM_EXTPROC_FUZZ_EXAMPLES=10000
runs the soak (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extproc.config import ServerConfig
from extproc.devstack.stack import LocalStack
from extproc.server import _StreamState
from tests.conftest import stack_config
from tests.helpers import body_message, headers_message, make_processor

EXAMPLES = int(os.environ.get("LLM_EXTPROC_FUZZ_EXAMPLES", "300"))
HTTP_EXAMPLES = max(20, EXAMPLES // 10)
FLEET = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/x",
    "/",
    "/v1/chat/completions?x=1",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/rerank",
    "/v1/score",
    "/tokenize",
    "/detokenize",
]
MULTIPART_PATHS = ["/v1/audio/transcriptions", "/v1/audio/translations"]

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", 3, None]), "content": json_value}
)
request_body = st.one_of(
    # Plausible requests with wrong types in every field.
    st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(["llama-3-8b", "", "nope"]), json_value)},
        optional={
            "messages": st.one_of(st.lists(message, max_size=4), json_value),
            "prompt": json_value,
            "input": json_value,
            "stream": json_value,
            "max_tokens": json_value,
            "user": json_value,
            "stream_options": json_value,
            "temperature": json_value,
            # Responses API
            "instructions": json_value,
            "max_output_tokens": json_value,
            "previous_response_id": json_value,
            # Anthropic Messages
            "system": st.one_of(
                st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": json_value})), json_value
            ),
            "metadata": json_value,
            # rerank / score / detokenize
            "query": json_value,
            "documents": json_value,
            "text_1": json_value,
            "text_2": json_value,
            "tokens": json_value,
        },
    ).map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),  # invalid UTF-8, truncated JSON, nothing at all
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),  # deep nesting
    st.just(b'{"model": "llama-3-8b", "messages": [{"role": "user", "content": "' + b"\xff" * 10 + b'"}]}'),
)


BOUNDARY = "fuzzb"
form_part = st.tuples(
    st.sampled_from(["model", "file", "stream", "prompt", "language", 'x"y', ""]),
    st.booleans(),  # sent as a file part
    st.one_of(
        st.sampled_from(["llama-3-8b", "true", "nope", ""]), st.text(max_size=30), st.binary(max_size=60)
    ),
)


def _form(parts: list[tuple[str, bool, str | bytes]], truncate: int | None) -> bytes:
    out = b""
    for name, is_file, value in parts:
        filename = '; filename="a.wav"' if is_file else ""
        data = value if isinstance(value, bytes) else value.encode()
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
        out += data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return out if truncate is None else out[:truncate]


# Audio uploads: well-formed forms with wrong fields, truncated forms, and garbage.
multipart_body = st.one_of(
    st.builds(_form, st.lists(form_part, max_size=5), st.one_of(st.none(), st.integers(0, 400))),
    st.binary(max_size=300),
)


def check_answer(response: ep.ProcessingResponse, anthropic: bool = False) -> None:
    kind = response.WhichOneof("response")
    if kind == "immediate_response":
        status = response.immediate_response.status.code
        assert 200 <= status < 500, status
        if status != 200:
            payload = json.loads(response.immediate_response.body)
            if anthropic:
                assert payload["type"] == "error"
            error = payload["error"]
            assert error["message"] and error["type"]
    else:
        assert kind in ("request_headers", "request_body"), kind


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["POST", "GET", "PUT", ""]),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
    extra=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12), st.text(max_size=30), max_size=4
    ),
    body=request_body,
)
# Generated header names that are also headers_message's parameters (a hypothesis find).
@example(
    path="/v1/chat/completions",
    method="POST",
    content_type="application/json",
    extra={"path": "", "method": "GET"},
    body=b'{"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}',
)
def test_ext_proc_messages_never_crash_or_5xx(
    path: str, method: str, content_type: str, extra: dict[str, str], body: bytes
) -> None:
    processor, _ = make_processor(FLEET, config=ServerConfig(max_body_bytes=64 * 1024))
    state = _StreamState()
    headers = headers_message(path, method)
    # Appended to the message, not passed as keywords: a generated name may be "path" or "method".
    for name, value in extra.items():
        headers.request_headers.headers.headers.add(key=name, raw_value=value.encode())
    for header in headers.request_headers.headers.headers:
        if header.key == "content-type":
            header.raw_value = content_type.encode()
    anthropic = path.startswith("/v1/messages")
    check_answer(processor.on_request_headers(headers.request_headers, state), anthropic)
    check_answer(processor.on_request_body(body_message(body).request_body, state), anthropic)


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(MULTIPART_PATHS),
    content_type=st.sampled_from(
        [f"multipart/form-data; boundary={BOUNDARY}", "multipart/form-data", "application/json", ""]
    ),
    body=multipart_body,
    end_of_stream=st.booleans(),  # Envoy's BUFFERED_PARTIAL sends only the head of big uploads
)
def test_ext_proc_multipart_uploads_never_crash_or_5xx(
    path: str, content_type: str, body: bytes, end_of_stream: bool
) -> None:
    processor, _ = make_processor(FLEET, config=ServerConfig(max_body_bytes=256))
    state = _StreamState()
    headers = headers_message(path, "POST")
    for header in headers.request_headers.headers.headers:
        if header.key == "content-type":
            header.raw_value = content_type.encode()
    check_answer(processor.on_request_headers(headers.request_headers, state))
    chunk = ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=end_of_stream))
    check_answer(processor.on_request_body(chunk.request_body, state))


@pytest.fixture(scope="module", params=["extproc", "wasm"])
def fuzz_stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    """Both data paths: on the Wasm one the filter answers what its snapshot decides (and
    validates the body as ext_proc does) and hands the rest to the brain."""
    local = LocalStack(stack_config(data_path=request.param))
    local.start()
    yield local
    local.stop()


@settings(max_examples=HTTP_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), body=request_body)
def test_http_through_envoy_gets_a_clear_answer(fuzz_stack: LocalStack, path: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{fuzz_stack.listen_port}{path}",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, payload = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        with error:
            status, payload = error.code, error.read()
    assert status < 500, (status, payload[:200])
    if status >= 400:
        assert json.loads(payload)["error"]["message"]


@settings(max_examples=HTTP_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(MULTIPART_PATHS), body=multipart_body)
def test_multipart_through_envoy_gets_a_clear_answer(fuzz_stack: LocalStack, path: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{fuzz_stack.listen_port}{path}",
        data=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, payload = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        with error:
            status, payload = error.code, error.read()
    assert status < 500, (status, payload[:200])
    if status >= 400:
        assert json.loads(payload)["error"]["message"]
