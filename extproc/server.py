"""The ext_proc gRPC server: Envoy's messages in, routing decisions out.

One gRPC stream per HTTP request. Request headers are read and client-sent routing headers
removed; the buffered body is parsed and routed; response headers close the in-flight count.
The routing stream never sees the response body, so streaming stays in Envoy. A second filter
in observability mode (Envoy does not wait for our replies) opens a second stream per request
that streams the response to us for token usage and latency (extproc.observe).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.admission import Capacity, Lease, answer_headers
from extproc.config import ServerConfig
from extproc.errors import ErrorKind, ErrorShape, RoutingError
from extproc.fleet.state import FleetSnapshot, FleetState
from extproc.headers import (
    CACHE_HEADER,
    DESTINATION_HEADER,
    EXT_PROC_ATTRIBUTES,
    FALLBACK_MODEL_HEADER,
    FALLBACK_OF_HEADER,
    LB_METADATA_NAMESPACE,
    MODEL_HEADER,
    ORIGINAL_PATH_HEADER,
    POOL_HEADER,
    PRIORITY_HEADER,
    PROVIDER_ATTEMPT_HEADER,
    PROVIDER_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_TIME_ATTRIBUTE,
    REQUESTED_MODEL_HEADER,
    RETRY_AFTER_HEADER,
    SERVED_HEADER,
    TENANT_HEADER,
    TIER_HEADER,
)
from extproc.observability.telemetry import RouteRecord, Telemetry
from extproc.observe import Observation, ResponseObserver
from extproc.policy.types import Target
from extproc.providers.health import parse_retry_after
from extproc.request import (
    ANTHROPIC_TASKS,
    MULTIPART_TASKS,
    ParsedRequest,
    RequestHeaders,
    Task,
    parse_body,
    parse_headers,
)
from extproc.router import Decision, Router

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
# Added by Envoy's route (response_headers_to_add: %UPSTREAM_HOST%): the endpoint that answered,
# which differs from our primary when a retry walked the list.
_METHOD_BY_TASK = {task: "GET" if task is Task.MODELS else "POST" for task in Task}

# Answers that never change, built once.
_CONTINUE_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
_CONTINUE_RESPONSE_HEADERS = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
_CONTINUE_BODY = ep.ProcessingResponse(request_body=ep.BodyResponse())
# Sent with the request-headers reply when the observer stream already reports each response's
# status: Envoy then skips this stream's response-headers round trip (it must be listed in the
# filter's allowed_override_modes, extproc/deploy/envoy/local.yaml). The stream still ends with the request.
SKIP_RESPONSE_HEADERS = pm.ProcessingMode(
    request_header_mode=pm.ProcessingMode.SEND,
    request_body_mode=pm.ProcessingMode.BUFFERED,
    response_header_mode=pm.ProcessingMode.SKIP,
    response_body_mode=pm.ProcessingMode.NONE,
    request_trailer_mode=pm.ProcessingMode.SKIP,
    response_trailer_mode=pm.ProcessingMode.SKIP,
)
_CONTINUE_HEADERS_SKIP_RESPONSE = ep.ProcessingResponse(
    request_headers=ep.HeadersResponse(), mode_override=SKIP_RESPONSE_HEADERS
)


# A clock step between Envoy's and ours must not turn into an hour-long TTFT.
_MAX_REQUEST_AGE_S = 600.0


def _header_pairs(headers: ep.HttpHeaders) -> list[tuple[str, str]]:
    # Envoy fills raw_value (bytes) and leaves value empty; older Envoys do the opposite.
    return [
        (h.key, h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
        for h in headers.headers.headers
    ]


def _envoy_request_start(message: ep.ProcessingRequest, clock: Callable[[], float]) -> float:
    """When Envoy received the request, on ``clock``; now if Envoy did not send the attribute.

    The observer's messages are processed whenever Python gets to them: on a busy CPU the request
    headers can be handled just before the first chunk, so "now" would shrink the measured TTFT
    to nothing. Envoy's own timestamp does not move."""
    now = clock()
    if EXT_PROC_ATTRIBUTES not in message.attributes:
        return now
    fields = message.attributes[EXT_PROC_ATTRIBUTES].fields
    if REQUEST_TIME_ATTRIBUTE not in fields:
        return now
    try:
        received = datetime.fromisoformat(fields[REQUEST_TIME_ATTRIBUTE].string_value).timestamp()
    except ValueError:
        return now
    return now - min(max(time.time() - received, 0.0), _MAX_REQUEST_AGE_S)


def _metadata(metadata: base_pb2.Metadata) -> dict[str, object]:
    """Envoy-forwarded dynamic metadata (forwarding_namespaces), e.g. verified JWT claims."""
    return {ns: json_format.MessageToDict(struct) for ns, struct in metadata.filter_metadata.items()}


def immediate(status: int, body: bytes, headers: list[tuple[str, str]]) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=ep.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()))
                    for k, v in headers
                ]
            ),
            body=body,
        )
    )


def _strip(spoofed: list[str], skip_response: bool = False) -> ep.ProcessingResponse:
    """Continue, removing client-sent routing headers (Envoy's header_mutation did too)."""
    if not spoofed:
        return _CONTINUE_HEADERS_SKIP_RESPONSE if skip_response else _CONTINUE_HEADERS
    response = ep.ProcessingResponse(
        request_headers=ep.HeadersResponse(
            response=ep.CommonResponse(header_mutation=ep.HeaderMutation(remove_headers=spoofed))
        )
    )
    if skip_response:
        response.mode_override.CopyFrom(SKIP_RESPONSE_HEADERS)
    return response


def _with_response_header(name: str, value: str) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        response_headers=ep.HeadersResponse(
            response=ep.CommonResponse(
                header_mutation=ep.HeaderMutation(
                    set_headers=[
                        base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(key=name, raw_value=value.encode()),
                            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ]
                )
            )
        )
    )


def error_response(error: RoutingError, task: Task | None = None) -> ep.ProcessingResponse:
    """The error in the shape of the caller's API: Anthropic's for /v1/messages*, OpenAI's otherwise."""
    shape = ErrorShape.ANTHROPIC if task in ANTHROPIC_TASKS else ErrorShape.OPENAI
    return immediate(error.status, error.body(shape), error.headers())


def decision_response(decision: Decision) -> ep.ProcessingResponse:
    common = ep.CommonResponse(
        header_mutation=ep.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
                for k, v in decision.set_headers
            ]
        ),
        # The route (and so the cluster) may depend on headers we just set.
        clear_route_cache=True,
    )
    if decision.body is not None:
        common.body_mutation.body = decision.body
    response = ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
    # override_host reads the list from here only: a header source would let clients choose
    # upstreams whenever ext_proc fails open.
    response.dynamic_metadata.fields[LB_METADATA_NAMESPACE].struct_value.fields[
        DESTINATION_HEADER
    ].string_value = ",".join(decision.endpoints)
    return response


@dataclass(slots=True)
class _StreamState:
    headers: RequestHeaders | None = None
    endpoint: str | None = None  # primary endpoint counted in flight until the response starts
    metadata: dict[str, object] | None = None
    started: float = 0.0  # monotonic time the decision was made
    streamed: bool = False
    skip_response: bool = False  # we asked Envoy to skip this stream's response headers
    record: RouteRecord | None = None  # kept only for requests that are logged or traced
    observer: ResponseObserver | None = None  # observation streams only
    traceparent: str = ""
    # Kept for capacity protection (limits, cache) after the decision.
    parsed: ParsedRequest | None = None
    decision: Decision | None = None
    error: RoutingError | None = None
    lease: Lease | None = None
    cache_status: str = ""
    # The fallback hop: the provider whose attempt failed, and what the client asked for.
    fallback_of: str = ""
    requested_model: str = ""
    provider_attempt: str = ""  # upstream observer of a provider cluster: which provider


def _ends_response(message: ep.ProcessingRequest, phase: str | None) -> bool:
    if phase == "response_headers":
        return bool(message.response_headers.end_of_stream)
    if phase == "response_body":
        return bool(message.response_body.end_of_stream)
    return phase == "response_trailers"


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        config: ServerConfig,
        router: Router,
        telemetry: Telemetry | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.telemetry = telemetry
        self.capacity = capacity
        self.stream_errors = 0
        # Passive health reads each response's status from exactly one stream: the observer's
        # once observer streams arrive (and Envoy honours our mode override), the routing
        # stream's response-headers phase otherwise.
        self.observer_streams_seen = False
        self.mode_override_ignored = False
        self.statuses_from_observer = 0
        self.statuses_from_routing = 0

    def _observer_reports_responses(self) -> bool:
        if not self.observer_streams_seen or self.mode_override_ignored:
            return False
        # The response cache marks its answers with a response header: that needs our own phase.
        policy = self.router.policy()
        return (
            policy is None
            or self.capacity is None
            or self.capacity.cache is None
            or not policy.caches_responses
        )

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ep.ProcessingResponse]:
        state = _StreamState()
        try:
            async for message in request_iterator:
                if message.observability_mode:
                    # Envoy ignores replies in observability mode: send none.
                    if self.on_observed(message, state):
                        # Nothing more can arrive: end the call now. Left for Envoy to end, the
                        # observer's stream dies at its deferred close, and grpc.aio leaks the
                        # native memory of the failed final batch (grpc/grpc#43360): measured
                        # 137 B per request here, 14 B once we close first (docs/reliability.md).
                        return
                    continue
                phase = message.WhichOneof("request")
                if phase == "request_headers":
                    if message.HasField("metadata_context"):
                        state.metadata = _metadata(message.metadata_context)
                    response = self.on_request_headers(message.request_headers, state)
                    yield response
                    if response.HasField("immediate_response"):
                        return  # our answer ends the request: end the call before Envoy does
                elif phase == "request_body":
                    response = self.on_request_body(message.request_body, state)
                    if self.capacity is not None and state.parsed is not None:
                        response = await self.protect(state, response)
                    yield response
                    if response.HasField("immediate_response"):
                        return
                elif phase == "response_headers":
                    # The endpoint stays counted until the stream ends: Envoy keeps this gRPC
                    # stream open until the whole response (all SSE tokens) has passed.
                    if state.skip_response and not self.mode_override_ignored:
                        self.mode_override_ignored = True
                        log.warning(
                            "Envoy ignored our processing mode override (allow_mode_override and "
                            "allowed_override_modes missing from its ext_proc filter?): response "
                            "status is read from the routing stream, one more round trip per request"
                        )
                    if state.endpoint is not None:
                        self.on_response_headers(message.response_headers, state)
                    if state.cache_status:
                        yield _with_response_header(CACHE_HEADER, state.cache_status)
                    else:
                        yield _CONTINUE_RESPONSE_HEADERS
                elif phase == "response_body":
                    yield ep.ProcessingResponse(response_body=ep.BodyResponse())
                elif phase == "request_trailers":
                    yield ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
                elif phase == "response_trailers":
                    yield ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stream_errors += 1
            log.exception("ext_proc stream failed")
            raise
        finally:
            # The HTTP request is over (answered, reset or dropped): the endpoint is free again.
            # A stream that ends without response headers is not counted against the endpoint:
            # clients hang up too. Upstream resets and timeouts reach us as Envoy's own 503/504
            # response headers, which passive health does count.
            self._release(state)
            if state.lease is not None and self.capacity is not None:
                self.capacity.release(state.lease)
            if state.record is not None and self.telemetry is not None:
                self.telemetry.routed(state.record)
            if state.observer is not None:
                # The response ended without end_of_stream (reset, client gone): report what we saw.
                self._observation_done(state.observer, state)

    def _release(self, state: _StreamState) -> None:
        if state.endpoint is not None:
            self.router.finished(state.endpoint)
            state.endpoint = None

    def on_observed(self, message: ep.ProcessingRequest, state: _StreamState) -> bool:
        """One message of an observation stream: request headers, response headers, body chunks.

        True once the response has ended: nothing more will arrive on this stream."""
        phase = message.WhichOneof("request")
        if state.provider_attempt:
            return self._on_provider_attempt(message, phase, state)
        if phase == "request_headers":
            values = dict(_header_pairs(message.request_headers))
            if PROVIDER_ATTEMPT_HEADER in values:
                state.provider_attempt = values.get(PROVIDER_HEADER, "") or "?"
                return False
            destination = values.get(DESTINATION_HEADER, "")
            state.traceparent = values.get("traceparent", "")
            request_id = values.get(REQUEST_ID_HEADER, "")
            state.observer = ResponseObserver(
                Observation(
                    endpoint=destination.split(",", 1)[0].strip(),
                    model=values.get(MODEL_HEADER, ""),
                    pool=values.get(POOL_HEADER, ""),
                    tier=values.get(TIER_HEADER, ""),
                    tenant=values.get(TENANT_HEADER, ""),
                    request_id=request_id,
                ),
                self.router.clock,
                _envoy_request_start(message, self.router.clock),
                keep_bytes=self.capacity.keep_bytes_for(request_id) if self.capacity is not None else 0,
            )
            self.observer_streams_seen = True
            return False
        observer = state.observer
        if observer is None:
            # Our own immediate responses reach the observer without their request headers.
            return _ends_response(message, phase)
        if phase == "response_headers":
            status, content_type = 0, ""
            primary = observer.observation.endpoint  # the list's first, until Envoy says who served
            for name, value in _header_pairs(message.response_headers):
                if name == ":status":
                    status = int(value) if value.isdigit() else 0
                elif name == "content-type":
                    content_type = value
                elif name == SERVED_HEADER and value:
                    observer.observation.endpoint = value.strip()
                elif name == FALLBACK_MODEL_HEADER and value:
                    # A provider attempt failed and the fleet answered (the fallback hop): the
                    # cost is the fleet's model at its pool's price.
                    observer.observation.model, observer.observation.pool = value, ""
            observer.on_headers(status, content_type)
            if self._observer_reports_responses():
                self.statuses_from_observer += 1
                # Streams' latency comes from the observed first token, not from headers.
                self.router.observe_response(
                    observer.observation.endpoint,
                    status,
                    observer.started,
                    timed=not observer.observation.streamed,
                    primary=primary,
                )
        elif phase == "response_body":
            observer.on_body(message.response_body.body)
        end = _ends_response(message, phase)
        if end:
            state.observer = None
            self._observation_done(observer, state)
        return end

    def _on_provider_attempt(
        self, message: ep.ProcessingRequest, phase: str | None, state: _StreamState
    ) -> bool:
        """One attempt at a provider, seen by the provider cluster's upstream observer: a 429 or
        5xx keeps the provider out of decisions until its retry-after has passed."""
        if phase == "response_headers":
            values = dict(_header_pairs(message.response_headers))
            status = int(values.get(":status", "0") or 0)
            # The fallback hop's answer passes this observer too: it is not the provider's.
            if (status == 429 or status >= 500) and FALLBACK_OF_HEADER not in values:
                retry_after = parse_retry_after(values.get(RETRY_AFTER_HEADER, ""))
                self.router.provider_failed(state.provider_attempt, retry_after, str(status))
            return True
        return _ends_response(message, phase)

    def _observation_done(self, observer: ResponseObserver, state: _StreamState) -> None:
        observation = observer.finish()
        if observation.response_id and 200 <= observation.status < 300:
            self.router.response_homes.remember(observation.response_id, observation.endpoint)
        if not observation.pool and observation.endpoint:
            snapshot = self.router.fleet.snapshot
            row = snapshot.index.get(observation.endpoint)
            observation.pool = snapshot.endpoints[row].pool if row is not None else ""
        if observation.tenant or observation.pool:
            self.router.account(observation, observation.tenant)
        if self.telemetry is None and self.capacity is None:
            return
        if self.telemetry is not None:
            self.telemetry.observed(observation, state.traceparent)
        if self.capacity is not None:
            self.capacity.observed(observation, observer.kept_body())

    async def protect(self, state: _StreamState, response: ep.ProcessingResponse) -> ep.ProcessingResponse:
        """Tenant limits and the response cache, after the routing decision (extproc.admission)."""
        capacity, headers, parsed = self.capacity, state.headers, state.parsed
        assert capacity is not None and headers is not None and parsed is not None
        if state.error is not None:
            entry = await capacity.degraded_answer(
                parsed, self.router.policy_verdict(headers, parsed), state.error
            )
            if entry is None:
                return response
            if state.record is not None:
                state.record.outcome, state.record.status = "cache_stale", entry.status
            return immediate(entry.status, entry.body, answer_headers(entry, "stale"))
        decision = state.decision
        if decision is None or (decision.limits is None and decision.cache is None):
            return response

        def redecide(target: Target) -> Decision:
            self._release(state)
            again = self.router.decide(
                headers,
                parsed,
                detail=state.record is not None,
                force_target=target,
                fallback_of=state.fallback_of,
            )
            state.endpoint = again.endpoints[0] if again.endpoints else None
            return again

        try:
            routed, admission = await capacity.admit(headers.request_id, parsed, decision, redecide)
        except RoutingError as error:
            self._release(state)
            self._failed(state, state.record, headers, parsed, error)
            return error_response(error, parsed.task)
        state.lease = admission.lease
        if admission.answer is not None:
            self._release(state)  # the upstream never sees this request
            if state.record is not None:
                state.record.outcome, state.record.status = "cache_hit", admission.answer.status
            entry = admission.answer
            return immediate(entry.status, entry.body, answer_headers(entry, "hit"))
        state.cache_status = admission.cache_status
        if routed is not decision:
            state.decision = routed
            if state.record is not None:
                self._describe(state.record, routed, parsed)
                state.record.outcome = "downgraded"
            return decision_response(routed)
        return response

    def on_request_headers(self, message: ep.HttpHeaders, state: _StreamState) -> ep.ProcessingResponse:
        pairs = _header_pairs(message)
        headers = parse_headers(pairs)
        # Envoy strips client-sent x-llm-* before us on the listener, so this header is ours: this
        # is the fallback hop of a provider attempt that failed (docs/providers.md).
        fallback_of = next((v for k, v in pairs if k == PROVIDER_HEADER), "")
        if fallback_of:
            values = dict(pairs)
            state.fallback_of = fallback_of
            state.requested_model = values.get(REQUESTED_MODEL_HEADER, "")
            headers.path = values.get(ORIGINAL_PATH_HEADER, headers.path)
        if not self.router.fleet.synced:
            # Started but the fleet is not known yet (Envoy may connect before our health says
            # SERVING): decide nothing, exactly like Envoy failing open, instead of answering
            # 404/503 from an empty fleet.
            return _strip(headers.spoofed)
        if state.metadata:
            headers.metadata = state.metadata
        state.headers = headers
        try:
            task = headers.task
            if task is None:
                raise RoutingError(ErrorKind.NOT_FOUND, f"no route for path {headers.path!r}", "unknown_path")
            if headers.method != _METHOD_BY_TASK[task]:
                raise RoutingError(
                    ErrorKind.METHOD_NOT_ALLOWED,
                    f"{headers.path} takes {_METHOD_BY_TASK[task]}, not {headers.method}",
                    "method_not_allowed",
                )
            if task is Task.MODELS:
                return immediate(200, self.router.models_body(), [("content-type", "application/json")])
            if message.end_of_stream:
                raise RoutingError(ErrorKind.INVALID_REQUEST, "request body is empty; expected a JSON object")
        except RoutingError as error:
            return error_response(error, headers.task)
        # A multipart upload's route asks Envoy for the body's head only (BUFFERED_PARTIAL): a
        # mode override from us would set BUFFERED again, so those keep the response phase.
        state.skip_response = task not in MULTIPART_TASKS and self._observer_reports_responses()
        return _strip(headers.spoofed, state.skip_response)

    def on_response_headers(self, message: ep.HttpHeaders, state: _StreamState) -> None:
        """Tell the router which endpoint answered and how (passive health, latency)."""
        status = 0
        served = ""
        for header in message.headers.headers:
            if header.key == ":status":
                status = int(header.raw_value or header.value or 0)
            elif header.key == SERVED_HEADER:
                served = (header.raw_value.decode() if header.raw_value else header.value).strip()
        if state.record is not None:
            state.record.status = status
            state.record.served_by = served
        # A stream's headers arrive before its first token: when an observer reports the
        # real time to first token, header timing of streams would only blur it.
        header_latency = self.telemetry is not None and self.telemetry.observers_seen and state.streamed
        self.statuses_from_routing += 1
        self.router.observe_response(
            served or state.endpoint or "",
            status,
            state.started,
            timed=not header_latency,
            primary=state.endpoint or "",
        )

    def on_request_body(self, message: ep.HttpBody, state: _StreamState) -> ep.ProcessingResponse:
        headers = state.headers
        if headers is None or headers.task is None or state.parsed is not None:
            # Headers phase already answered, or routed on the head of a partially buffered body.
            return _CONTINUE_BODY
        telemetry = self.telemetry
        record: RouteRecord | None = None
        if telemetry is not None and telemetry.active:
            traceparent = headers.headers.get("traceparent", "")
            if telemetry.wants(headers.request_id, traceparent):
                record = RouteRecord(
                    headers.request_id,
                    traceparent,
                    task=headers.task.value,
                    started=self.router.clock(),
                    started_unix_ns=time.time_ns(),
                )
        try:
            parsed = parse_body(
                headers.task,
                headers.content_type,
                message.body,
                self.config.max_body_bytes,
                complete=message.end_of_stream or headers.task not in MULTIPART_TASKS,
            )
        except RoutingError as error:
            self.router.record_error(headers.task.value, "", error)
            self._failed(state, record, headers, None, error)
            return error_response(error, headers.task)
        if state.fallback_of:
            # The body is the provider's: route what the client asked for.
            parsed.model = state.requested_model or parsed.model
            self.router.provider_failed(state.fallback_of, None)
        state.parsed = parsed
        try:
            # records its own outcome in metrics
            decision = self.router.decide(
                headers, parsed, detail=record is not None, fallback_of=state.fallback_of
            )
        except RoutingError as error:
            state.error = error
            self._failed(state, record, headers, parsed, error)
            return error_response(error, parsed.task)
        state.decision = decision
        state.endpoint = decision.endpoints[0] if decision.endpoints else None
        state.started = self.router.clock()
        state.streamed = parsed.stream
        if record is not None:
            self._describe(record, decision, parsed)
            state.record = record
        return decision_response(decision)

    def _describe(self, record: RouteRecord, decision: Decision, parsed: ParsedRequest) -> None:
        record.tenant, record.rule, record.tier = decision.tenant, decision.rule, decision.tier
        record.priority = next((v for k, v in decision.set_headers if k == PRIORITY_HEADER), "")
        record.model_requested, record.model_served = decision.requested_model, decision.model
        record.pool, record.endpoints, record.scores = decision.pool, decision.endpoints, decision.scores
        record.speeds = decision.speeds
        record.complexity = round(decision.complexity, 4)
        record.strong_gain = round(decision.strong_gain, 4)
        record.complexity_features = decision.complexity_features
        record.decision_us = decision.decision_s * 1e6
        record.outcome = "fallback_model" if decision.model_fallback else "routed"
        if self.config.decision_log_include_prompt:
            record.prompt = parsed.text

    def _failed(
        self,
        state: _StreamState,
        record: RouteRecord | None,
        headers: RequestHeaders,
        parsed: ParsedRequest | None,
        error: RoutingError,
    ) -> None:
        """Errors and sheds are always logged, sampled or not."""
        telemetry = self.telemetry
        if telemetry is None or not telemetry.active:
            return
        if record is None:
            record = RouteRecord(
                headers.request_id,
                headers.headers.get("traceparent", ""),
                task=headers.task.value if headers.task else "",
                started=self.router.clock(),
                started_unix_ns=time.time_ns(),
            )
        if parsed is not None:
            record.model_requested = parsed.model
        record.status = error.status
        record.outcome = "shed" if error.kind is ErrorKind.OVERLOADED else "rejected"
        record.error = error.message
        state.record = record


class HealthGate:
    """gRPC health: SERVING only after the fleet's first successful sync, NOT_SERVING on shutdown."""

    def __init__(self, fleet: FleetState) -> None:
        self.servicer = health.aio.HealthServicer()
        self._fleet = fleet
        self._pending: set[asyncio.Task[None]] = set()
        fleet.subscribe(self._on_snapshot)

    def _on_snapshot(self, _snapshot: FleetSnapshot) -> None:
        if self._fleet.synced:
            self._set(health_pb2.HealthCheckResponse.SERVING)

    def _set(self, status: int) -> None:
        # The aio servicer's set() is a coroutine; keep a reference until it has run.
        for service in ("", SERVICE_NAME):
            task = asyncio.ensure_future(self.servicer.set(service, status))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def start(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        self._set(serving if self._fleet.synced else health_pb2.HealthCheckResponse.NOT_SERVING)

    def shutting_down(self) -> None:
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)


def build_grpc_server(
    config: ServerConfig, processor: ExternalProcessor, gate: HealthGate
) -> grpc.aio.Server:
    options = [
        ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
        ("grpc.max_send_message_length", config.grpc_max_message_bytes),
        # Several worker processes may share one port.
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    server = grpc.aio.server(options=options)
    ep_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    health_pb2_grpc.add_HealthServicer_to_server(gate.servicer, server)
    bound = server.add_insecure_port(config.address)
    if bound == 0:
        raise OSError(f"cannot listen on {config.address}")
    config.port = bound
    return server
