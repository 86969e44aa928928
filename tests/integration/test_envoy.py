"""Through a real Envoy: routing, streaming, header hygiene, errors and fail-open."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from extproc.devstack.stack import LocalStack
from extproc.scheduler.outlier import OutlierConfig
from tests.conftest import ext_proc_counter, sim_records, stack_config

pytestmark = pytest.mark.envoy


def post(
    stack: LocalStack, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.listen_port}{path}",
        data=body,
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def sim_control(address: str, change: dict[str, object]) -> None:
    """Flip a simulated endpoint's fault switches (POST /sim/control)."""
    request = urllib.request.Request(
        f"http://{address}/sim/control",
        data=json.dumps(change).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def chat_body(text: str = "hello", **extra: object) -> bytes:
    return json.dumps(
        {"model": "llama-3-8b", "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)


def test_openai_client_non_streaming_is_routed_to_a_discovered_endpoint(stack: LocalStack) -> None:
    raw = client(stack).chat.completions.with_raw_response.create(
        model="llama-3-8b", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    served = raw.headers["x-gateway-destination-endpoint-served"]
    assert served in {e["address"] for e in stack.fleet}
    # The endpoint Envoy connected to is the one the simulator says answered.
    assert raw.headers["x-sim-endpoint"] == served


def test_chosen_endpoint_is_the_one_that_served(stack: LocalStack) -> None:
    for _ in range(10):
        status, headers, _ = post(stack, "/v1/chat/completions", chat_body(max_tokens=2))
        assert status == 200
        # The simulator echoes the list ext_proc handed Envoy; its head must be the server.
        chosen = headers["x-sim-destination"].split(",")
        assert headers["x-gateway-destination-endpoint-served"] == chosen[0]
        assert len(chosen) == len(set(chosen)) >= 2


def test_stream_arrives_incrementally_through_envoy(stack: LocalStack) -> None:
    arrivals = []
    text = []
    tokens = 67  # a count no other test in this module asks for: finds the server's record
    stream = client(stack).chat.completions.create(
        model="llama-3-8b",
        messages=[{"role": "user", "content": "Count slowly"}],
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == tokens
    assert len(text) >= 32
    # Tokens are not buffered anywhere on the way: the chunks reach the client spread over (at
    # least half of) the time the server spent decoding them, not in one burst at the end. (Not
    # measured from the request's start: a fresh stack's first request has its own warm-up.)
    (record,) = [r for r in sim_records(stack) if r["completion_tokens"] == tokens]
    decoding_s = (float(record["e2e_s"]) - float(record["ttft_s"])) * stack.config.time_scale  # type: ignore[arg-type]
    assert decoding_s > 0
    assert arrivals[-1] - arrivals[0] >= decoding_s * 0.5, (arrivals[-1] - arrivals[0], decoding_s)


def test_spoofed_destination_header_is_ignored(stack: LocalStack) -> None:
    target = stack.fleet[-1]["address"]
    served = set()
    for _ in range(12):
        status, headers, _ = post(
            stack,
            "/v1/chat/completions",
            chat_body(max_tokens=1),
            {"x-gateway-destination-endpoint": "10.1.2.3:80", "x-llm-tier": "premium"},
        )
        assert status == 200
        served.add(headers["x-gateway-destination-endpoint-served"])
        assert "10.1.2.3:80" not in headers["x-sim-destination"]
        assert headers.get("x-sim-llm-tier", "") == ""
    assert served <= {e["address"] for e in stack.fleet}
    del target


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "application/json", 400, "missing_model"),
        (chat_body().replace(b"llama-3-8b", b"no-such-model"), "application/json", 404, "model_not_found"),
        (chat_body(), "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_bad_requests_get_clear_openai_errors_through_envoy(
    stack: LocalStack, body: bytes, content_type: str, status: int, code: str
) -> None:
    got_status, headers, payload = post(stack, "/v1/chat/completions", body, {"content-type": content_type})
    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert json.loads(payload)["error"]["code"] == code


def test_body_over_limit_is_413_from_ext_proc(stack: LocalStack) -> None:
    status, _, payload = post(stack, "/v1/chat/completions", chat_body("x" * (4 * 1024 * 1024 + 10)))
    assert status == 413
    assert json.loads(payload)["error"]["code"] == "body_too_large"


def test_models_are_listed_by_ext_proc(stack: LocalStack) -> None:
    models = {m.id for m in client(stack).models.list()}
    served = {m for e in stack.fleet for m in e["models"]}
    assert models == served


def test_ext_proc_killed_envoy_fails_open_and_client_cannot_pick() -> None:
    local = LocalStack(stack_config(message_timeout="0.2s"))
    local.start()
    try:
        local.stop_extproc()
        victim = local.fleet[0]["address"]
        served = []
        for _ in range(16):
            status, headers, _ = post(
                local,
                "/v1/chat/completions",
                chat_body(max_tokens=1),
                {"x-gateway-destination-endpoint": victim},
            )
            assert status == 200
            served.append(headers["x-gateway-destination-endpoint-served"])
        # Without ext_proc, least_request spreads requests; the spoofed header is never honoured.
        assert set(served) != {victim}
        local.start_extproc()
        status, headers, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1))
        assert status == 200 and "x-sim-destination" in headers
    finally:
        local.stop()


def test_sigterm_lets_in_flight_streams_finish() -> None:
    import signal
    import threading

    local = LocalStack(stack_config())
    local.start()
    try:
        chunks: list[str] = []
        errors: list[BaseException] = []
        first_chunk = threading.Event()

        def consume() -> None:
            try:
                stream = client(local).chat.completions.create(
                    model="llama-3-8b",
                    messages=[{"role": "user", "content": "go"}],
                    max_tokens=80,
                    stream=True,
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        chunks.append(chunk.choices[0].delta.content)
                        first_chunk.set()
            except BaseException as error:
                errors.append(error)
                first_chunk.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first_chunk.wait(30)
        extproc = local.child("extproc").proc
        extproc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert not errors, errors
        assert len(chunks) == 80
        assert extproc.wait(40) == 0
    finally:
        local.stop()


def scrape_age(local: LocalStack, address: str, missing: float = float("inf")) -> float:
    """Seconds since ext_proc last scraped ``address`` (its /metrics gauge); ``missing`` if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{local.config.metrics_port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("llm_extproc_endpoint_scrape_age_seconds") and f'"{address}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return missing


@pytest.mark.parametrize("observe", [True, False], ids=["status-from-observer", "status-from-routing-stream"])
def test_crashed_primary_is_skipped_by_envoy_retry_onto_the_fallback(observe: bool) -> None:
    # Only Envoy's retries and passive health may notice the crash: no /health check after the
    # first, and the victim's last metrics never go stale (its failed scrapes would otherwise
    # move it to the end of every list within a second: a race with the requests on slow
    # machines). So the lists of the keys whose home it is start with it until it is ejected.
    local = LocalStack(
        stack_config(extproc_args=["--health-interval", "3600", "--stale-after", "3600"], observe=observe)
    )
    local.start()
    try:
        victim = local.fleet[0]["address"]
        sim_control(victim, {"crash": True})
        # One at a time, each with its own session key: keys spread the lists' primaries over
        # the fleet (the crashed endpoint is some keys' home), with no concurrency at the dead
        # endpoint.
        # Until the victim was some list's primary often enough for passive health to eject it
        # (its consecutive-failure threshold): how often a key lands on it depends on the learned
        # speeds, so a fixed count of requests can miss it (seen in CI). Bounded.
        threshold = OutlierConfig().consecutive_failures
        replies = []
        for i in range(400):
            replies.append(
                post(local, "/v1/chat/completions", chat_body(max_tokens=1), {"x-user-id": f"user-{i}"})
            )
            if i >= 39 and ext_proc_counter(local, "llm_extproc_served_by_fallback_total") >= threshold:
                break
        assert [status for status, _, _ in replies] == [200] * len(replies), [
            body[:200] for _, _, body in replies
        ]
        served = {headers["x-gateway-destination-endpoint-served"] for _, headers, _ in replies}
        assert victim not in served
        # Envoy did retry: the dead primary was tried and the next endpoint of the list served.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{local.admin_port}/stats?filter=fleet.upstream_rq_retry$"
        ) as r:
            retries = int(r.read().decode().split(":")[1])
        assert retries >= 1
        # ... and passive health learned it from the fallbacks' answers: ejected before any scrape.
        assert ext_proc_counter(local, "llm_extproc_served_by_fallback_total") >= 1
        assert ext_proc_counter(local, "llm_extproc_endpoint_ejections_total") >= 1
    finally:
        local.stop()


def test_envoy_half_closes_ext_proc_streams_instead_of_resetting_them(stack: LocalStack) -> None:
    """grpc.aio leaks native memory for every stream Envoy resets (grpc/grpc#43360), ~120 B a
    request: our Envoy config turns on the graceful close (see docs/reliability.md)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.admin_port}/runtime", timeout=5) as reply:
        entries = json.loads(reply.read())["entries"]
    assert entries["envoy.reloadable_features.ext_proc_graceful_grpc_close"]["final_value"] == "true"
