"""Every API a vLLM server speaks, through the real Envoy local stack, routed by one policy.

The official SDKs (openai's Responses and audio clients, anthropic's Messages client) talk to
Envoy; ext_proc parses each API's body, the policy matches on its task, the observer reads
token usage from each API's own stream format into the metrics.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest
import yaml

from extproc.devstack.stack import LocalStack
from tests.conftest import started_stack
from tests.integration.test_envoy import post

pytestmark = pytest.mark.envoy

BODY_LIMIT = 256 * 1024
FLEET = {
    "endpoints": [
        {"models": ["llama-3-8b"], "pool": "fast", "gpu_class": "a100"},
        {"models": ["llama-3-8b"], "pool": "fast", "gpu_class": "a100"},
        {"models": ["llama-3-8b"], "pool": "slow", "gpu_class": "t4"},
        {"models": ["whisper-large-v3"], "pool": "audio", "gpu_class": "l4"},
    ]
}
POLICY = {
    "pools": [
        {"name": "fast", "models": ["llama-3-8b"]},
        {"name": "slow", "models": ["llama-3-8b"]},
        {"name": "audio", "models": ["whisper-large-v3"]},
    ],
    # An alias: uploads name it, the body Envoy holds is rewritten to the served model.
    "models": {"whisper": {"model": "whisper-large-v3", "pool": "audio"}},
    "rules": [
        # Agents (Responses and Messages clients) get premium priority, pooling work a short timeout.
        {
            "name": "agents",
            "match": {"task": ["responses", "messages", "count_tokens"]},
            "priority": "premium",
        },
        {"name": "pooling", "match": {"task": ["rerank", "score", "tokenize", "detokenize"]}, "timeout_s": 7},
        {"name": "audio", "match": {"task": ["transcription", "translation"]}, "timeout_s": 120},
    ],
    "default": {},
}


@pytest.fixture(scope="module")
def apis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    folder = tmp_path_factory.mktemp("apis")
    (folder / "fleet.yaml").write_text(yaml.safe_dump(FLEET))
    (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    local = started_stack(
        sim_fleet_file=str(folder / "fleet.yaml"),
        policy=str(folder / "policy.yaml"),
        max_body_bytes=BODY_LIMIT,
    )
    yield local
    local.stop()


def pools(stack: LocalStack) -> dict[str, set[str]]:
    by_pool: dict[str, set[str]] = {}
    for endpoint in stack.fleet:
        by_pool.setdefault(endpoint["pool"], set()).add(endpoint["address"])
    return by_pool


def metric_sum(stack: LocalStack, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def output_tokens(stack: LocalStack, **labels: str) -> float:
    return metric_sum(stack, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **labels)


def wait_for_metric(read: Callable[[], float], expected: float) -> float:
    """The observer reports after the response ended: wait (bounded) for its numbers."""
    deadline = time.monotonic() + 10
    seen = read()
    while seen < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = read()
    return seen


def wait_for_output_tokens(stack: LocalStack, expected: float) -> float:
    return wait_for_metric(lambda: output_tokens(stack), expected)


def ttft_count(stack: LocalStack) -> float:
    return metric_sum(stack, "gen_ai_server_time_to_first_token_seconds_count")


def form(fields: dict[str, str], audio: bytes, boundary: str = "b0und") -> tuple[str, bytes]:
    """A multipart/form-data upload: the fields first, then the audio file."""
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    return f"multipart/form-data; boundary={boundary}", body + audio + f"\r\n--{boundary}--\r\n".encode()


def openai_client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)


def anthropic_client(stack: LocalStack) -> anthropic.Anthropic:
    # Newer SDKs send the key as a bearer token; Anthropic's own x-api-key header is sent too.
    return anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{stack.listen_port}",
        api_key="sk-ant-test",
        default_headers={"x-api-key": "sk-ant-test"},
        max_retries=0,
        timeout=30,
    )


def test_openai_responses_plain_and_streamed_routed_by_policy_with_usage_in_metrics(
    apis_stack: LocalStack,
) -> None:
    client = openai_client(apis_stack)
    before = output_tokens(apis_stack)
    raw = client.responses.with_raw_response.create(
        model="llama-3-8b", input="Say hi", instructions="be brief", max_output_tokens=5
    )
    response = raw.parse()
    assert response.output_text.startswith("tok0") and response.usage is not None
    assert raw.headers["x-sim-priority"] == "premium"  # the agents rule applied
    assert wait_for_output_tokens(apis_stack, before + 5) == before + 5
    deltas = []
    completed = None
    for event in client.responses.create(model="llama-3-8b", input="Count", max_output_tokens=7, stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert len(deltas) == 7 and completed is not None and completed.usage is not None
    # Usage from the response.completed event, not a count of deltas: both say 7 here.
    assert wait_for_output_tokens(apis_stack, before + 12) == before + 12
    assert metric_sum(apis_stack, "llm_extproc_requests_total", task="responses", outcome="routed") == 2
    assert metric_sum(apis_stack, "gen_ai_server_time_to_first_token_seconds_count") >= 1


def test_responses_follow_ups_go_to_the_endpoint_that_stored_the_response(apis_stack: LocalStack) -> None:
    client = openai_client(apis_stack)

    def learned() -> float:
        return metric_sum(apis_stack, "llm_extproc_response_homes_learned_total")

    def wait_until_learned(count: float) -> None:
        """The observer reports an answer (and its id) just after it passed: wait, bounded."""
        deadline = time.monotonic() + 10
        while learned() < count:
            assert time.monotonic() < deadline, "the observer never reported the response"
            time.sleep(0.02)

    base = learned()
    raw = client.responses.with_raw_response.create(
        model="llama-3-8b", input="remember 7", max_output_tokens=2
    )
    home = raw.headers["x-gateway-destination-endpoint-served"]
    previous = raw.parse().id
    wait_until_learned(base + 1)
    for turn in range(6):
        # The simulator, like vLLM, answers 404 for a response id it did not store: every
        # follow-up succeeding means every one reached the home endpoint.
        follow = client.responses.with_raw_response.create(
            model="llama-3-8b", input="and again", previous_response_id=previous, max_output_tokens=2
        )
        assert follow.headers["x-gateway-destination-endpoint-served"] == home
        previous = follow.parse().id
        wait_until_learned(base + 2 + turn)
    assert metric_sum(apis_stack, "llm_extproc_response_homes_pinned_total") == 6


def test_anthropic_messages_plain_and_streamed_with_anthropic_headers_and_usage(
    apis_stack: LocalStack,
) -> None:
    client = anthropic_client(apis_stack)
    before = output_tokens(apis_stack)
    ttft_before = ttft_count(apis_stack)
    raw = client.messages.with_raw_response.create(
        model="llama-3-8b",
        max_tokens=4,
        system="You are terse.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    )
    message = raw.parse()
    assert message.usage.output_tokens == 4 and message.content[0].type == "text"
    assert raw.headers["x-sim-priority"] == "premium"  # the same agents rule
    # x-api-key and anthropic-version reach the model server untouched, like Authorization.
    assert raw.headers["x-sim-api-key-seen"] == "yes" and raw.headers["x-sim-anthropic-version"]
    assert wait_for_output_tokens(apis_stack, before + 4) == before + 4
    with client.messages.stream(
        model="llama-3-8b", max_tokens=6, messages=[{"role": "user", "content": "stream please"}]
    ) as stream:
        text = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(text) == 6 and final.usage.output_tokens == 6
    # Input tokens from message_start, output tokens from message_delta, TTFT from the first
    # content_block_delta (only the streamed request has one).
    assert wait_for_output_tokens(apis_stack, before + 10) == before + 10
    assert wait_for_metric(lambda: ttft_count(apis_stack), ttft_before + 1) == ttft_before + 1
    assert metric_sum(apis_stack, "llm_extproc_requests_total", task="messages", outcome="routed") == 2
    # Coding agents count tokens before sending: routed like the rest, answered in Anthropic's shape.
    counted = client.messages.count_tokens(
        model="llama-3-8b", messages=[{"role": "user", "content": "hello"}]
    )
    assert counted.input_tokens > 0
    assert metric_sum(apis_stack, "llm_extproc_requests_total", task="count_tokens", outcome="routed") == 1


def test_anthropic_clients_get_errors_in_anthropic_shape(apis_stack: LocalStack) -> None:
    client = anthropic_client(apis_stack)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-nope", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": missing.value.body["error"]["message"]},  # type: ignore[index]
    }
    status, _, body = post(apis_stack, "/v1/messages", b'{"model": "llama-3-8b"}')
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = post(apis_stack, "/v1/responses", b'{"model": "llama-3-8b"}')
    assert status == 400 and json.loads(body)["error"]["code"] == "missing_input"  # OpenAI shape there


def test_rerank_score_tokenize_detokenize_are_routed_by_task(apis_stack: LocalStack) -> None:
    fleet = {e["address"] for e in apis_stack.fleet}
    for path, body in [
        ("/v1/rerank", {"model": "llama-3-8b", "query": "red apple", "documents": ["sky", "red apple"]}),
        ("/v1/score", {"model": "llama-3-8b", "text_1": "a", "text_2": "a"}),
        ("/tokenize", {"model": "llama-3-8b", "prompt": "hello world"}),
        ("/detokenize", {"model": "llama-3-8b", "tokens": [1, 2, 3]}),
    ]:
        status, headers, reply = post(apis_stack, path, json.dumps(body).encode())
        assert status == 200, (path, reply[:200])
        assert headers["x-gateway-destination-endpoint-served"] in fleet - pools(apis_stack)["audio"], path
        assert headers["x-sim-expected-timeout-ms"] == "7000", path  # the pooling rule applied
    for task in ("rerank", "score", "tokenize", "detokenize"):
        assert metric_sum(apis_stack, "llm_extproc_requests_total", task=task, outcome="routed") == 1


def test_transcription_upload_larger_than_the_body_limit_is_routed_by_its_model_field(
    apis_stack: LocalStack,
) -> None:
    audio_pool = pools(apis_stack)["audio"]
    audio = b"RIFF" + bytes(range(256)) * (4 * BODY_LIMIT // 256)  # 4x the body limit
    raw = openai_client(apis_stack).audio.transcriptions.with_raw_response.create(
        model="whisper-large-v3", file=("speech.wav", audio, "audio/wav")
    )
    assert raw.parse().text.startswith("tok0")
    assert raw.headers["x-gateway-destination-endpoint-served"] in audio_pool
    # Envoy held only the head for ext_proc; the whole upload reached the model server.
    assert raw.headers["x-sim-audio-bytes"] == str(len(audio))
    assert raw.headers["x-sim-model"] == "whisper-large-v3"
    assert metric_sum(apis_stack, "llm_extproc_requests_total", task="transcription", pool="audio") == 1
    # Translations take the same form (the SDK has deprecated its client for them: raw HTTP).
    content_type, body = form({"model": "whisper-large-v3"}, audio)
    status, headers, reply = post(apis_stack, "/v1/audio/translations", body, {"content-type": content_type})
    assert status == 200 and json.loads(reply)["text"].startswith("tok0")
    assert headers["x-gateway-destination-endpoint-served"] in audio_pool
    assert metric_sum(apis_stack, "llm_extproc_requests_total", task="translation", pool="audio") == 1


def test_an_upload_naming_an_alias_is_renamed_when_small_and_refused_clearly_when_streamed(
    apis_stack: LocalStack,
) -> None:
    # A small upload, whole in what Envoy hands ext_proc: "whisper" is renamed in the body (the
    # simulator, like vLLM, answers 404 for a model it does not serve).
    content_type, body = form({"model": "whisper", "language": "en"}, b"\x00" * 1000)
    status, headers, reply = post(
        apis_stack, "/v1/audio/transcriptions", body, {"content-type": content_type}
    )
    assert status == 200, reply[:200]
    assert headers["x-sim-model"] == "whisper-large-v3" and headers["x-sim-audio-bytes"] == "1000"
    # Over the body limit the file streams past ext_proc, and Envoy cannot safely replace the
    # head of a stream: a clear 400 naming the model to send instead of a 404 from the server.
    big = bytes(range(256)) * (3 * BODY_LIMIT // 256)
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(apis_stack).audio.transcriptions.create(
            model="whisper", file=("a.wav", big, "audio/wav")
        )
    assert "'whisper-large-v3'" in refused.value.message


def test_streamed_transcription_reports_its_usage(apis_stack: LocalStack) -> None:
    fields = {"model": "whisper-large-v3", "stream": "true", "stream_include_usage": "true"}
    content_type, body = form(fields, b"\x00" * 64_000)
    before = output_tokens(apis_stack, gen_ai_response_model="whisper-large-v3")
    status, headers, reply = post(
        apis_stack,
        "/v1/audio/transcriptions",
        body,
        {"content-type": content_type},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert reply.count(b"transcription.chunk") == 32 + 2  # a chunk per token, the finish and usage chunks
    # The final usage chunk's completion tokens (the simulator's default budget) reach the metrics.
    seen = wait_for_metric(
        lambda: output_tokens(apis_stack, gen_ai_response_model="whisper-large-v3"), before + 32
    )
    assert seen == before + 32


def test_transcription_with_the_model_after_a_large_file_gets_a_clear_400(apis_stack: LocalStack) -> None:
    boundary = "b0und"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        + b"\x00" * (2 * BODY_LIMIT)
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-large-v3\r\n'.encode()
        + f"--{boundary}--\r\n".encode()
    )
    status, _, reply = post(
        apis_stack,
        "/v1/audio/transcriptions",
        body,
        {"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 400
    assert "before the file" in json.loads(reply)["error"]["message"]
    # A small upload may name its model anywhere: the whole form fits in the head.
    small = body.replace(b"\x00" * (2 * BODY_LIMIT), b"\x00" * 1000)
    status, headers, _ = post(
        apis_stack,
        "/v1/audio/transcriptions",
        small,
        {"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200 and headers["x-gateway-destination-endpoint-served"] in pools(apis_stack)["audio"]


def test_json_apis_keep_the_body_limit(apis_stack: LocalStack) -> None:
    huge = json.dumps({"model": "llama-3-8b", "input": "x" * (BODY_LIMIT + 10)}).encode()
    status, _, reply = post(apis_stack, "/v1/responses", huge)
    assert status == 413 and json.loads(reply)["error"]["type"] == "request_too_large"
    status, _, reply = post(apis_stack, "/v1/messages", huge)
    assert status == 413 and json.loads(reply)["type"] == "error"


async def test_envoy_hands_ext_proc_only_the_head_of_an_upload() -> None:
    """A recording ext_proc in place of the stack's: what Envoy sends of a 2 MiB upload."""
    import io

    import aiohttp

    from extproc.config import ServerConfig
    from extproc.server import HealthGate, build_grpc_server
    from tests.helpers import make_processor

    limit, upload = 64 * 1024, 2 << 20
    local = started_stack(max_body_bytes=limit)
    try:
        local.stop_extproc()
        processor, fleet = make_processor([e["address"] for e in local.fleet], models=("llama-3-8b",))
        processor.config.max_body_bytes = limit
        bodies: list[tuple[int, bool]] = []
        decide = processor.on_request_body

        def recording(message, state):  # type: ignore[no-untyped-def]
            bodies.append((len(message.body), message.end_of_stream))
            return decide(message, state)

        processor.on_request_body = recording  # type: ignore[method-assign]
        config = ServerConfig(port=local.extproc_port, max_body_bytes=limit)
        server = build_grpc_server(config, processor, HealthGate(fleet))
        await server.start()
        try:
            form = aiohttp.FormData()
            form.add_field("model", "llama-3-8b")
            form.add_field("file", io.BytesIO(b"\x01" * upload), filename="a.wav", content_type="audio/wav")
            url = f"http://127.0.0.1:{local.listen_port}/v1/audio/transcriptions"
            async with aiohttp.ClientSession() as session, session.post(url, data=form) as reply:
                assert reply.status == 200, await reply.text()
                assert reply.headers["x-sim-audio-bytes"] == str(upload)
                assert reply.headers["x-sim-destination"]  # routed by our decision
            # One message, not the end of the body: Envoy waited for the limit, then for our
            # answer; it held the limit plus what its last socket read brought, never the file.
            assert len(bodies) == 1 and not bodies[0][1], bodies
            assert limit <= bodies[0][0] < upload // 4, bodies
        finally:
            await server.stop(None)
    finally:
        local.stop()
