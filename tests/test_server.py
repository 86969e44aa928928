from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.config import ServerConfig
from extproc.fleet.state import FleetState, build_snapshot
from extproc.scheduler.outlier import OutlierConfig, OutlierDetector
from extproc.scheduler.scheduler import Scheduler
from extproc.server import HealthGate, _StreamState, build_grpc_server
from tests.helpers import (
    body_message,
    chat,
    destination_metadata,
    headers_message,
    make_processor,
    set_headers,
)

FLEET = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]


def run_request(processor, headers_msg, body_msg=None):  # type: ignore[no-untyped-def]
    state = _StreamState()
    first = processor.on_request_headers(headers_msg.request_headers, state)
    if body_msg is None:
        return first, None, state
    return first, processor.on_request_body(body_msg.request_body, state), state


def immediate_json(response: ep.ProcessingResponse) -> tuple[int, dict[str, object]]:
    assert response.WhichOneof("response") == "immediate_response"
    return response.immediate_response.status.code, json.loads(response.immediate_response.body)


def test_decision_sets_header_metadata_model_and_clears_route_cache() -> None:
    processor, _ = make_processor(FLEET)
    first, second, state = run_request(processor, headers_message(), body_message(chat()))
    assert first.WhichOneof("response") == "request_headers"
    headers = set_headers(second)
    endpoints = headers["x-gateway-destination-endpoint"].split(",")
    assert len(endpoints) == 3 and len(set(endpoints)) == 3 and set(endpoints) <= set(FLEET)
    assert destination_metadata(second) == headers["x-gateway-destination-endpoint"]
    assert headers["x-llm-model"] == "llama-3-8b"
    assert second.request_body.response.clear_route_cache
    assert state.endpoint == endpoints[0]


def test_least_inflight_spreads_a_burst_and_release_frees_the_endpoint() -> None:
    processor, _ = make_processor(FLEET)
    primaries = []
    states = []
    for _ in range(4):
        _, second, state = run_request(processor, headers_message(), body_message(chat()))
        primaries.append(set_headers(second)["x-gateway-destination-endpoint"].split(",")[0])
        states.append(state)
    assert sorted(primaries) == sorted(FLEET)
    processor._release(states[2])
    _, second, _ = run_request(processor, headers_message(), body_message(chat()))
    assert set_headers(second)["x-gateway-destination-endpoint"].split(",")[0] == primaries[2]


def test_spoofed_routing_headers_are_removed_before_deciding() -> None:
    processor, _ = make_processor(FLEET)
    first, second, _ = run_request(
        processor,
        headers_message(x_gateway_destination_endpoint="6.6.6.6:80", x_llm_tier="premium"),
        body_message(chat()),
    )
    assert list(first.request_headers.response.header_mutation.remove_headers) == [
        "x-gateway-destination-endpoint",
        "x-llm-tier",
    ]
    assert "6.6.6.6:80" not in destination_metadata(second)


def test_models_endpoint_is_answered_from_the_fleet() -> None:
    processor, _ = make_processor(FLEET, models=("llama-3-8b", "qwen-7b"))
    first, _, _ = run_request(processor, headers_message("/v1/models", "GET", end_of_stream=True))
    status, payload = immediate_json(first)
    assert status == 200
    assert {m["id"] for m in payload["data"]} == {"llama-3-8b", "qwen-7b"}  # type: ignore[index, union-attr]


def test_errors_become_openai_style_immediate_responses() -> None:
    processor, _ = make_processor(FLEET, config=ServerConfig(max_body_bytes=1000))
    cases = [
        (headers_message(), body_message(b"{oops"), 400, "invalid_json"),
        (headers_message(), body_message(chat(model="nope")), 404, "model_not_found"),
        (headers_message(), body_message(chat(text="x" * 2000)), 413, "body_too_large"),
        (headers_message(content_type="text/plain"), body_message(chat()), 415, "unsupported_media_type"),
    ]
    for headers_msg, body_msg, status, code in cases:
        _, second, state = run_request(processor, headers_msg, body_msg)
        got_status, payload = immediate_json(second)
        assert (got_status, payload["error"]["code"]) == (status, code)  # type: ignore[index]
        assert state.endpoint is None
    first, _, _ = run_request(processor, headers_message("/v1/nope"))
    assert immediate_json(first)[0] == 404
    first, _, _ = run_request(processor, headers_message("/v1/chat/completions", "GET"))
    assert immediate_json(first)[0] == 405
    first, _, _ = run_request(processor, headers_message(end_of_stream=True))
    assert immediate_json(first)[0] == 400


def test_no_ready_endpoint_is_503_with_retry_after() -> None:
    processor, fleet = make_processor(FLEET)
    fleet.publish(build_snapshot(fleet.snapshot.endpoints, {}, version=9), synced=True)
    _, second, _ = run_request(processor, headers_message(), body_message(chat()))
    status, _ = immediate_json(second)
    assert status == 503
    headers = {h.header.key: h.header.raw_value for h in second.immediate_response.headers.set_headers}
    assert headers["retry-after"] == b"1"


async def test_grpc_stream_and_health_gate() -> None:
    processor, fleet = make_processor(FLEET)
    unsynced = FleetState()
    gate = HealthGate(unsynced)
    config = ServerConfig(port=0)
    server = build_grpc_server(config, processor, gate)
    gate.start()
    await server.start()
    try:
        async with grpc.aio.insecure_channel(config.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            unsynced.publish(fleet.snapshot, synced=True)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            async def messages() -> AsyncIterator[ep.ProcessingRequest]:
                yield headers_message()
                yield body_message(chat())
                yield ep.ProcessingRequest(response_headers=ep.HttpHeaders())

            stub = ep_grpc.ExternalProcessorStub(channel)
            replies = [r async for r in stub.Process(messages())]
            assert [r.WhichOneof("response") for r in replies] == [
                "request_headers",
                "request_body",
                "response_headers",
            ]
            assert processor.router.inflight.total() == 0
    finally:
        await server.stop(None)


def test_response_headers_report_status_and_the_endpoint_that_served() -> None:
    from envoy.config.core.v3 import base_pb2

    processor, _ = make_processor(FLEET)
    seen: list[tuple[str, int]] = []
    processor.router.on_response = lambda endpoint, status, _elapsed: seen.append((endpoint, status))
    _, _, state = run_request(processor, headers_message(), body_message(chat()))
    response_headers = ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":status", raw_value=b"503"),
                base_pb2.HeaderValue(
                    key="x-gateway-destination-endpoint-served", raw_value=FLEET[3].encode()
                ),
            ]
        )
    )
    processor.on_response_headers(response_headers, state)
    primary = state.endpoint
    assert primary is not None
    if primary == FLEET[3]:
        assert seen == [(FLEET[3], 503)]
    else:  # Envoy's try at our primary failed before FLEET[3] answered: the primary is blamed too
        assert seen == [(primary, 0), (FLEET[3], 503)]


def test_an_answer_from_a_fallback_blames_the_primary_and_ejects_it_before_any_scrape() -> None:
    """A crashed primary answers nothing: the client sees a retry's 200 from the next endpoint.
    Passive health must still learn that the primary failed, or it stays in every list."""
    from envoy.config.core.v3 import base_pb2

    processor, _ = make_processor(FLEET)
    outliers = OutlierDetector(OutlierConfig(consecutive_failures=1), fleet_size=lambda: len(FLEET))
    processor.router.on_response = outliers.observe
    processor.router.picker = Scheduler(outliers=outliers)
    _, _, state = run_request(processor, headers_message(), body_message(chat()))
    primary = state.endpoint
    assert primary is not None
    fallback = next(e for e in FLEET if e != primary)
    served = ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                base_pb2.HeaderValue(
                    key="x-gateway-destination-endpoint-served", raw_value=fallback.encode()
                ),
            ]
        )
    )
    processor.on_response_headers(served, state)
    assert processor.router.retried_away == 1 and outliers.is_ejected(primary)
    assert not outliers.is_ejected(fallback)
    # A fallback's time to headers includes the failed try and Envoy's backoff: not its latency.
    assert math.isnan(outliers._health[fallback].latency_ewma_s)
    # The next list leaves the ejected endpoint out, long before a scrape would notice.
    _, reply, _ = run_request(processor, headers_message(), body_message(chat()))
    assert primary not in destination_metadata(reply).split(",")


async def test_stream_ending_without_response_headers_frees_the_endpoint_without_blaming_it() -> None:
    processor, fleet = make_processor(FLEET)
    seen: list[tuple[str, int]] = []
    processor.router.on_response = lambda endpoint, status, _elapsed: seen.append((endpoint, status))
    gate = HealthGate(fleet)
    config = ServerConfig(port=0)
    server = build_grpc_server(config, processor, gate)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(config.address) as channel:

            async def messages() -> AsyncIterator[ep.ProcessingRequest]:
                yield headers_message()
                yield body_message(chat())

            replies = [r async for r in ep_grpc.ExternalProcessorStub(channel).Process(messages())]
            assert set_headers(replies[1])["x-gateway-destination-endpoint"]
        for _ in range(100):
            if processor.router.inflight.total() == 0:
                break
            await asyncio.sleep(0.01)
        assert processor.router.inflight.total() == 0
        assert seen == []  # the client may have hung up: not the endpoint's fault
    finally:
        await server.stop(None)


def test_stream_usage_is_injected_only_when_configured_and_not_asked_for() -> None:
    def body_sent(config: ServerConfig, request: dict[str, object]) -> dict[str, object] | None:
        processor, _ = make_processor(FLEET, config=config)
        _, second, _ = run_request(processor, headers_message(), body_message(request))
        mutation = second.request_body.response.body_mutation
        if not mutation.body:
            return None
        assert set_headers(second)["content-length"] == str(len(mutation.body))
        parsed: dict[str, object] = json.loads(mutation.body)
        return parsed

    streamed = chat(stream=True)
    assert body_sent(ServerConfig(), streamed) is None
    injected = body_sent(ServerConfig(inject_stream_usage=True), streamed)
    assert injected is not None and injected["stream_options"] == {"include_usage": True}
    assert injected["messages"] == streamed["messages"]
    asked = chat(stream=True, stream_options={"include_usage": True})
    assert body_sent(ServerConfig(inject_stream_usage=True), asked) is None
    assert body_sent(ServerConfig(inject_stream_usage=True), chat()) is None


def test_until_the_fleet_is_known_requests_pass_through_undecided() -> None:
    processor, fleet = make_processor(FLEET)
    fleet.synced = False
    first, second, state = run_request(
        processor, headers_message(x_gateway_destination_endpoint=FLEET[0]), body_message(chat())
    )
    # No 404/503 from an empty view: Envoy routes as if ext_proc had failed open...
    assert first.request_headers.response.header_mutation.remove_headers == ["x-gateway-destination-endpoint"]
    assert second.WhichOneof("response") == "request_body" and not second.request_body.HasField("response")
    assert state.endpoint is None
    fleet.synced = True
    _, decided, _ = run_request(processor, headers_message(), body_message(chat()))
    assert set_headers(decided)["x-gateway-destination-endpoint"]  # ...and decides once it is


def _observed(*pairs: tuple[str, str], response: bool = False) -> ep.ProcessingRequest:
    from envoy.config.core.v3 import base_pb2

    headers = ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        ),
        end_of_stream=True,
    )
    if response:
        return ep.ProcessingRequest(observability_mode=True, response_headers=headers)
    return ep.ProcessingRequest(observability_mode=True, request_headers=headers)


async def test_once_observer_streams_report_status_envoy_is_asked_to_skip_response_headers() -> None:
    from envoy.config.core.v3 import base_pb2

    processor, fleet = make_processor(FLEET)
    seen: list[tuple[str, int]] = []
    processor.router.on_response = lambda endpoint, status, _elapsed: seen.append((endpoint, status))
    config = ServerConfig(port=0)
    server = build_grpc_server(config, processor, HealthGate(fleet))
    await server.start()

    async def exchange(*messages: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
        async def feed() -> AsyncIterator[ep.ProcessingRequest]:
            for message in messages:
                yield message

        async with grpc.aio.insecure_channel(config.address) as channel:
            return [r async for r in ep_grpc.ExternalProcessorStub(channel).Process(feed())]

    try:
        # No observer seen yet: the routing stream keeps its response-headers phase.
        first = await exchange(headers_message(), body_message(chat()))
        assert not first[0].HasField("mode_override")
        # An observer stream reports the response: passive health hears it from there.
        replies = await exchange(
            _observed(("x-gateway-destination-endpoint", FLEET[1]), ("x-request-id", "r1")),
            _observed((":status", "503"), ("x-gateway-destination-endpoint-served", FLEET[2]), response=True),
        )
        assert replies == []  # Envoy ignores replies in observability mode: none are sent
        # FLEET[1] was first in the list: FLEET[2] answering means Envoy's try at FLEET[1] failed.
        assert seen == [(FLEET[1], 0), (FLEET[2], 503)] and processor.statuses_from_observer == 1
        # Now the routing stream asks Envoy to skip its response headers, and only that.
        second = await exchange(headers_message(), body_message(chat()))
        mode = second[0].mode_override
        assert second[0].WhichOneof("response") == "request_headers"
        assert (mode.response_header_mode, mode.request_body_mode) == (mode.SKIP, mode.BUFFERED)
        # An Envoy without allow_mode_override sends them anyway: read status from there again.
        status_200 = ep.ProcessingRequest(
            response_headers=ep.HttpHeaders(
                headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
            )
        )
        await exchange(headers_message(), body_message(chat()), status_200)
        assert processor.mode_override_ignored and processor.statuses_from_routing == 1
        third = await exchange(headers_message(), body_message(chat()))
        assert not third[0].HasField("mode_override")
    finally:
        await server.stop(None)


async def test_streams_we_have_finished_are_closed_by_us_not_left_for_envoy_to_reset() -> None:
    """Envoy resets streams the server leaves open, and grpc.aio leaks native memory for each
    (grpc/grpc#43360): once nothing more can arrive, the server must end the call itself."""
    processor, fleet = make_processor(FLEET)
    config = ServerConfig(port=0)
    server = build_grpc_server(config, processor, HealthGate(fleet))
    await server.start()
    never = asyncio.Event()  # Envoy's side stays open: only the server can end these calls

    async def ended_by_server(*messages: ep.ProcessingRequest) -> list[str | None]:
        async def feed() -> AsyncIterator[ep.ProcessingRequest]:
            for message in messages:
                yield message
            await never.wait()

        async with grpc.aio.insecure_channel(config.address) as channel:
            call = ep_grpc.ExternalProcessorStub(channel).Process(feed())
            # A guard against hanging, not a timing threshold.
            replies = await asyncio.wait_for(_collect(call), timeout=10)
            assert await call.code() == grpc.StatusCode.OK
            return replies

    try:
        # An observer stream once the response ended.
        observed = await ended_by_server(
            _observed(("x-gateway-destination-endpoint", FLEET[1]), ("x-request-id", "r1")),
            _observed((":status", "200"), response=True),
        )
        assert observed == []
        # An observer stream of our own immediate response: no request headers reach it.
        assert await ended_by_server(_observed((":status", "400"), response=True)) == []
        # A routing stream we answered ourselves.
        answered = await ended_by_server(headers_message(), body_message(b"{oops"))
        assert answered == ["request_headers", "immediate_response"]
    finally:
        never.set()
        await server.stop(None)


async def _collect(call: grpc.aio.StreamStreamCall) -> list[str | None]:
    return [reply.WhichOneof("response") async for reply in call]


def _with_content_type(message: ep.ProcessingRequest, content_type: str) -> ep.ProcessingRequest:
    for header in message.request_headers.headers.headers:
        if header.key == "content-type":
            header.raw_value = content_type.encode()
    return message


def test_messages_errors_are_anthropic_shaped_and_openai_paths_keep_theirs() -> None:
    processor, _ = make_processor(FLEET)
    body = {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    _, second, _ = run_request(processor, headers_message("/v1/messages"), body_message(body))
    status, payload = immediate_json(second)
    assert status == 404
    assert payload["type"] == "error" and payload["error"]["type"] == "not_found_error"  # type: ignore[index]
    _, bad, _ = run_request(processor, headers_message("/v1/messages"), body_message(b"{"))
    assert immediate_json(bad)[1]["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    _, counting, _ = run_request(processor, headers_message("/v1/messages/count_tokens"), body_message(body))
    assert immediate_json(counting)[1]["type"] == "error"
    first, _, _ = run_request(processor, headers_message("/v1/messages", "GET"))
    assert immediate_json(first)[0] == 405 and immediate_json(first)[1]["type"] == "error"
    _, openai_style, _ = run_request(
        processor, headers_message("/v1/responses"), body_message({"model": "nope", "input": "x"})
    )
    assert immediate_json(openai_style)[1]["error"]["code"] == "model_not_found"  # type: ignore[index]


def test_every_new_api_is_routed_like_chat() -> None:
    processor, _ = make_processor(FLEET)
    for path, body in [
        ("/v1/responses", {"model": "llama-3-8b", "input": "hi", "stream": True}),
        (
            "/v1/messages",
            {"model": "llama-3-8b", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/rerank", {"model": "llama-3-8b", "query": "q", "documents": ["a"]}),
        ("/v1/score", {"model": "llama-3-8b", "text_1": "a", "text_2": "b"}),
        ("/tokenize", {"model": "llama-3-8b", "prompt": "a"}),
        ("/detokenize", {"model": "llama-3-8b", "tokens": [1]}),
    ]:
        processor_with_usage, _ = make_processor(FLEET, config=ServerConfig(inject_stream_usage=True))
        _, second, _ = run_request(processor_with_usage, headers_message(path), body_message(body))
        assert set(set_headers(second)["x-gateway-destination-endpoint"].split(",")) <= set(FLEET), path
        # stream_options is a chat/completions field: other APIs' bodies pass untouched.
        assert not second.request_body.response.body_mutation.body, path
    del processor


def test_multipart_upload_is_routed_on_the_head_of_its_body() -> None:
    processor, _ = make_processor(FLEET, models=("whisper",), config=ServerConfig(max_body_bytes=1024))
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode() + b"\x00" * 600
    headers = _with_content_type(
        headers_message("/v1/audio/transcriptions"), f"multipart/form-data; boundary={boundary}"
    )
    state = _StreamState()
    first = processor.on_request_headers(headers.request_headers, state)
    # No mode override: it would turn the route's BUFFERED_PARTIAL back into BUFFERED.
    assert first.WhichOneof("response") == "request_headers" and not first.HasField("mode_override")
    partial = ep.ProcessingRequest(request_body=ep.HttpBody(body=head, end_of_stream=False))
    second = processor.on_request_body(partial.request_body, state)
    assert set_headers(second)["x-llm-model"] == "whisper"
    assert not second.request_body.response.body_mutation.body  # the form is never re-serialised
    # Should Envoy send more of the body, it passes: the request is already routed.
    more = ep.ProcessingRequest(request_body=ep.HttpBody(body=b"\x00" * 600, end_of_stream=True))
    assert processor.on_request_body(more.request_body, state) == ep.ProcessingResponse(
        request_body=ep.BodyResponse()
    )


def test_previous_response_id_goes_to_the_endpoint_that_stored_it() -> None:
    processor, _ = make_processor(FLEET)
    home = FLEET[2]
    observed = _StreamState()
    processor.on_observed(_observed(("x-gateway-destination-endpoint", home)), observed)
    body = json.dumps(
        {"id": "resp_42", "object": "response", "usage": {"input_tokens": 1, "output_tokens": 1}}
    )
    response_headers = _observed((":status", "200"), ("content-type", "application/json"), response=True)
    response_headers.response_headers.end_of_stream = False
    processor.on_observed(response_headers, observed)
    assert processor.router.response_homes.home_of("resp_42") is None  # not until the body is seen
    done = ep.ProcessingRequest(
        observability_mode=True, response_body=ep.HttpBody(body=body.encode(), end_of_stream=True)
    )
    assert processor.on_observed(done, observed)
    assert processor.router.response_homes.home_of("resp_42") == home
    follow_up = {"model": "llama-3-8b", "input": "and then?", "previous_response_id": "resp_42"}
    for _ in range(6):  # the home stays first however loaded it gets (nothing is released)
        _, second, _ = run_request(processor, headers_message("/v1/responses"), body_message(follow_up))
        endpoints = set_headers(second)["x-gateway-destination-endpoint"].split(",")
        assert endpoints[0] == home and len(endpoints) == len(set(endpoints)) == 3
    unknown = {**follow_up, "previous_response_id": "resp_unknown"}
    primaries = set()
    for _ in range(4):
        _, second, _ = run_request(processor, headers_message("/v1/responses"), body_message(unknown))
        primaries.add(set_headers(second)["x-gateway-destination-endpoint"].split(",")[0])
    assert len(primaries) > 1  # an unknown id is routed by load like any request


def test_observed_time_counts_from_envoys_request_time_not_from_when_python_reads_it() -> None:
    from datetime import UTC, datetime, timedelta

    from extproc.headers import EXT_PROC_ATTRIBUTES, REQUEST_TIME_ATTRIBUTE
    from extproc.server import _envoy_request_start

    def clock() -> float:
        return 1000.0

    message = ep.ProcessingRequest()
    assert _envoy_request_start(message, clock) == 1000.0  # no attribute: now
    received = datetime.now(UTC) - timedelta(seconds=2)
    message.attributes[EXT_PROC_ATTRIBUTES].fields[REQUEST_TIME_ATTRIBUTE].string_value = received.isoformat()
    assert 997.5 < _envoy_request_start(message, clock) < 998.1
    message.attributes[EXT_PROC_ATTRIBUTES].fields[REQUEST_TIME_ATTRIBUTE].string_value = "garbage"
    assert _envoy_request_start(message, clock) == 1000.0
    # A clock step cannot make a request look hours old.
    message.attributes[EXT_PROC_ATTRIBUTES].fields[REQUEST_TIME_ATTRIBUTE].string_value = (
        datetime.now(UTC) - timedelta(days=1)
    ).isoformat()
    assert _envoy_request_start(message, clock) == 400.0
