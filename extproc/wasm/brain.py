"""The brain's HTTP surface for the Wasm filter (docs/wasm.md).

- ``GET /v1/llm-extproc/snapshot``: the routing snapshot; ``if-none-match: <version>`` → 304.
- ``POST /v1/llm-extproc/decide``: one request the snapshot could not decide, answered by the
  ext_proc path's own code (ExternalProcessor's header and body phases, policy, capacity).
- ``POST /v1/llm-extproc/observations``: the filter's per-tick batch of response observations,
  fed to passive health and counted, and its per-request records (extproc.wasm.records):
  histograms, decision log, spend, token budgets, and the end of escalated requests'
  concurrency leases.
- ``POST /v1/llm-extproc/cache-fill``: the whole response of an escalated cache miss, kept by the
  filter as it passed (``x-request-id`` names the miss), stored in the response cache.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admission import Lease
from extproc.deploy.wasm_config import DECISION_HEADERS, DEFAULT_SETTINGS, PROVIDER_DECISION_HEADERS
from extproc.headers import (
    DESTINATION_HEADER,
    LB_METADATA_NAMESPACE,
    PROVIDER_HEADER,
    PROVIDER_PATH_HEADER,
    REQUEST_ID_HEADER,
)
from extproc.observability.listen import listen
from extproc.observe import Observation
from extproc.router import Router
from extproc.server import ExternalProcessor, _StreamState
from extproc.wasm.records import FilterRecord, ResponseGroup
from extproc.wasm.snapshot import DEFAULT_STALE_AFTER_MS, build_snapshot

log = logging.getLogger(__name__)
_Parsed = TypeVar("_Parsed")

SNAPSHOT_PATH = "/v1/llm-extproc/snapshot"
DECIDE_PATH = "/v1/llm-extproc/decide"
OBSERVATIONS_PATH = "/v1/llm-extproc/observations"
CACHE_FILL_PATH = "/v1/llm-extproc/cache-fill"
# The filter sends the original request line in these (its call's own :path is DECIDE_PATH).
ORIGINAL_PATH = "x-llm-extproc-path"
ORIGINAL_METHOD = "x-llm-extproc-method"
# A snapshot is rebuilt at most this often: the fleet changes every scrape (50-100 ms) anyway,
# and N+1 Envoy VMs poll every 100 ms.
REBUILD_EVERY_S = 0.05
# An escalated request's concurrency lease is held until the filter's record says the request
# ended. A record that never comes (the VM died, the call to us timed out and the filter failed
# open) must not lock the tenant out: past the route's timeout (300 s) the lease expires.
LEASE_TTL_S = 360.0
MAX_HELD_LEASES = 100_000
# The filter waits this long for /decide (extproc.deploy.wasm_config.FilterSettings), then lets
# the request through undecided: it will never send that request's record. A decision that
# took most of it keeps no lease (the tenant may get one request too many, never a lockout).
DECIDE_TIMEOUT_S = DEFAULT_SETTINGS.decide_timeout_ms / 1000
LATE_DECISION_S = 0.8 * DECIDE_TIMEOUT_S
_DECIDABLE = frozenset(DECISION_HEADERS)
# A provider decision's headers (Envoy copies them only in configs with providers).
_DECIDABLE_FOR_PROVIDERS = frozenset((*DECISION_HEADERS, *PROVIDER_DECISION_HEADERS))


def _pairs(mutation: ep.HeaderMutation) -> list[list[str]]:
    return [
        [option.header.key, option.header.raw_value.decode("utf-8", "replace") or option.header.value]
        for option in mutation.set_headers
    ]


def answer_for(response: ep.ProcessingResponse) -> dict[str, Any]:
    """The filter's view of an ext_proc reply: respond, route (headers, body) or continue."""
    if response.HasField("immediate_response"):
        immediate = response.immediate_response
        return {
            "action": "respond",
            "status": immediate.status.code,
            "headers": _pairs(immediate.headers),
            "body": immediate.body.decode("utf-8", "replace"),
        }
    if response.HasField("request_body") and response.request_body.HasField("response"):
        common = response.request_body.response
        # A provider's path (docs/wasm.md: Envoy's Lua step moves it into :path).
        headers = [
            [PROVIDER_PATH_HEADER, value] if name == ":path" else [name, value]
            for name, value in _pairs(common.header_mutation)
        ]
        allowed = _DECIDABLE_FOR_PROVIDERS if any(n == PROVIDER_HEADER for n, _ in headers) else _DECIDABLE
        headers = [pair for pair in headers if pair[0] in allowed]
        endpoints = (
            response.dynamic_metadata.fields[LB_METADATA_NAMESPACE]
            .struct_value.fields[DESTINATION_HEADER]
            .string_value
        )
        answer: dict[str, Any] = {
            "action": "route",
            "headers": headers,
            "primary": endpoints.split(",", 1)[0],
        }
        if common.HasField("body_mutation"):
            answer["body"] = common.body_mutation.body.decode("utf-8")
        return answer
    return {"action": "continue"}


@dataclass
class EndpointReport:
    responses: int = 0
    errors: int = 0
    ttft_us_sum: int = 0
    ttft_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retried_away: int = 0
    inflight: int = 0


_SUMMED = (
    "responses",
    "errors",
    "ttft_us_sum",
    "ttft_count",
    "prompt_tokens",
    "completion_tokens",
    "retried_away",
)


@dataclass
class Reports:
    """What the filters reported, summed; in-flight is the latest batch's count."""

    batches: int = 0
    endpoints: dict[str, EndpointReport] = field(default_factory=dict)

    def add(self, batch: dict[str, Any], router: Router) -> None:
        self.batches += 1
        on_response = router.on_response
        for address, values in (batch.get("endpoints") or {}).items():
            report = self.endpoints.setdefault(str(address), EndpointReport())
            for name in _SUMMED:
                setattr(report, name, getattr(report, name) + int(values.get(name, 0)))
            report.inflight = int(values.get("inflight", 0))
            if on_response is None:
                continue
            # Passive health sees each failed response; one success resets its failure streak.
            for _ in range(min(int(values.get("errors", 0)), 100)):
                on_response(str(address), 503, math.nan)
            if int(values.get("responses", 0)) > int(values.get("errors", 0)):
                count = int(values.get("ttft_count", 0))
                mean_s = int(values.get("ttft_us_sum", 0)) / count / 1e6 if count else math.nan
                on_response(str(address), 200, mean_s)
        metrics = router.metrics
        if metrics is None:
            return
        snapshot = router.fleet.snapshot
        # Decisions the filter took itself: llm_extproc_requests counts them like the brain's own.
        for key, count in (batch.get("decisions") or {}).items():
            parts = str(key).split("|")
            if len(parts) < 5:
                continue
            task, model, tier, outcome, primary = parts[0], "|".join(parts[1:-3]), *parts[-3:]
            row = snapshot.index.get(primary)
            pool = snapshot.endpoints[row].pool if row is not None else ""
            metrics.requests.labels(task, pool, model, tier, outcome).inc(int(count))


class Brain:
    def __init__(
        self,
        processor: ExternalProcessor,
        *,
        stale_after_ms: int = DEFAULT_STALE_AFTER_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.processor = processor
        self.router = processor.router
        self.stale_after_ms = stale_after_ms
        self.clock = clock
        self.reports = Reports()
        self.decided = 0
        self.records = 0
        self.records_dropped = 0  # over the filter's per-batch cap: counted, not seen
        self.records_unreadable = 0
        self.grouped = 0  # requests reported as numbers in a group
        self.leases_expired = 0
        self.cache_fills = 0
        self._leases: OrderedDict[str, tuple[float, Lease]] = OrderedDict()
        self.snapshots_built = 0
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_body = b""
        self._built_for: tuple[Any, ...] = ()
        self._built_at = -math.inf
        self._runner: web.AppRunner | None = None
        self.port = 0

    def status(self) -> dict[str, Any]:
        """For /healthz: what the filters asked and reported."""
        endpoints = self.reports.endpoints.values()
        return {
            "snapshots_built": self.snapshots_built,
            "snapshot_version": self._snapshot["version"] if self._snapshot else None,
            "decided": self.decided,
            "report_batches": self.reports.batches,
            "responses": sum(e.responses for e in endpoints),
            "prompt_tokens": sum(e.prompt_tokens for e in endpoints),
            "completion_tokens": sum(e.completion_tokens for e in endpoints),
            "first_byte_timings": sum(e.ttft_count for e in endpoints),
            "inflight": sum(e.inflight for e in endpoints),
            "records": self.records,
            "records_dropped": self.records_dropped,
            "records_unreadable": self.records_unreadable,
            "grouped": self.grouped,
            "leases_held": len(self._leases),
            "leases_expired": self.leases_expired,
            "cache_fills": self.cache_fills,
        }

    def snapshot(self) -> tuple[dict[str, Any], bytes]:
        now = self.clock()
        router = self.router
        picker = router.picker
        outliers = getattr(picker, "outliers", None)
        key = (router.fleet.snapshot.version, id(router.policy()), getattr(outliers, "generation", 0))
        if self._snapshot is None or key != self._built_for or now - self._built_at >= REBUILD_EVERY_S:
            telemetry = self.processor.telemetry
            self._snapshot = build_snapshot(
                router,
                now,
                stale_after_ms=self.stale_after_ms,
                log_sample_below=telemetry.log.sample_below if telemetry is not None else 0,
            )
            self._snapshot_body = json.dumps(self._snapshot, separators=(",", ":")).encode()
            self._built_for, self._built_at = key, now
            self.snapshots_built += 1
        return self._snapshot, self._snapshot_body

    async def _get_snapshot(self, request: web.Request) -> web.Response:
        if not self.router.fleet.synced:
            return web.Response(status=503, text="fleet not synced yet")
        snapshot, body = self.snapshot()
        if request.headers.get("if-none-match") == snapshot["version"]:
            return web.Response(status=304)
        return web.Response(body=body, content_type="application/json")

    async def decide(self, headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
        """One escalated request through the ext_proc path's phases; in-flight and capacity
        leases are released at once (the filter counts its own in-flight)."""
        processor = self.processor
        message = ep.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
            ),
            end_of_stream=not body,
        )
        state = _StreamState()
        answer: dict[str, Any] = {"action": "continue"}
        started = self.clock()
        try:
            response = processor.on_request_headers(message, state)
            if response.HasField("immediate_response") or state.headers is None or not body:
                answer = answer_for(response)
                return answer
            response = processor.on_request_body(ep.HttpBody(body=body, end_of_stream=True), state)
            if processor.capacity is not None and state.parsed is not None:
                response = await processor.protect(state, response)
            answer = answer_for(response)
            return answer
        finally:
            processor._release(state)
            self._after_decision(state, answer, late=self.clock() - started >= LATE_DECISION_S)
            if state.record is not None and processor.telemetry is not None:
                processor.telemetry.routed(state.record)
            self.decided += 1

    def _after_decision(self, state: _StreamState, answer: dict[str, Any], late: bool) -> None:
        """What outlives the decision of a routed request: its concurrency lease (held until the
        filter's record ends it) and a cache miss to fill (the filter keeps the response).
        ``late``: the filter has probably stopped waiting for this answer."""
        capacity = self.processor.capacity
        if capacity is None:
            return
        lease = state.lease
        routed = answer.get("action") == "route"
        if lease is not None:
            if routed and not late and lease.limits.concurrency is not None and lease.request_id:
                self._hold(lease)
                answer["lease"] = True
            else:
                capacity.release(lease)
        if routed and state.cache_status == "miss" and state.headers is not None:
            keep = capacity.keep_bytes_for(state.headers.request_id)
            if keep > 0:
                answer["cache_keep"] = keep

    def _hold(self, lease: Lease) -> None:
        now = self.clock()
        self._leases[lease.request_id] = (now + LEASE_TTL_S, lease)
        self._expire_leases(now)

    def _expire_leases(self, now: float) -> None:
        capacity = self.processor.capacity
        held = self._leases
        while held:
            request_id, (until, lease) = next(iter(held.items()))
            if until > now and len(held) <= MAX_HELD_LEASES:
                break
            del held[request_id]
            self.leases_expired += 1
            if capacity is not None:
                capacity.release(lease)

    def ended(self, raw_records: Any, dropped: int) -> None:
        """The filter's per-request records: the ext_proc observer's work, from a batch."""
        self.records_dropped += max(0, dropped)
        processor, router = self.processor, self.router
        telemetry, capacity = processor.telemetry, processor.capacity
        now = router.clock()
        fleet = router.fleet.snapshot
        for record in self._readable(raw_records, FilterRecord.parse):
            self.records += 1
            held = self._leases.pop(record.request_id, None) if record.request_id else None
            if held is not None and capacity is not None:
                capacity.release(held[1])
            pool = record.pool
            if not pool:
                row = fleet.index.get(record.served_by or record.endpoints.split(",", 1)[0])
                pool = fleet.endpoints[row].pool if row is not None else ""
            observation = record.observation(pool)
            if observation is not None:
                if observation.tenant or observation.pool:
                    router.account(observation, observation.tenant)
                if capacity is not None:
                    capacity.settle(observation)
            if telemetry is None:
                continue
            if record.escalated:
                # Our own decision's record waits for this (joined by request id).
                if observation is not None:
                    telemetry.observed(observation, "")
            elif telemetry.logs(record.request_id, bool(record.error)):
                telemetry.completed(record.route_record(pool, now), observation)
            elif observation is not None:
                telemetry.completed(None, observation)
        self._expire_leases(self.clock())

    def ended_grouped(self, raw_groups: Any) -> None:
        """The filter's groups: requests it reports as numbers only (not escalated, refused or
        sampled for the decision log): histograms, spend, and for streams the per-response
        consumers (time to first token, the speed model)."""
        router, telemetry = self.router, self.processor.telemetry
        fleet = router.fleet.snapshot
        for group in self._readable(raw_groups, ResponseGroup.parse):
            self.grouped += len(group)
            pool = group.pool
            if not pool:
                row = fleet.index.get(group.endpoint)
                pool = fleet.endpoints[row].pool if row is not None else ""
            if group.tenant or pool:
                usage = group.usage_total(pool)
                if usage is not None:
                    router.account(usage, group.tenant)
            if telemetry is None:
                continue
            if group.streamed:
                for observation in group.observations(pool):
                    telemetry.completed(None, observation)
                continue
            telemetry.completed_many(group.batch(pool))

    def _readable(self, raw: Any, parse: Callable[[Any], _Parsed | None]) -> Iterator[_Parsed]:
        """The items of a batch's list that parse; the others are counted as unreadable."""
        for item in raw if isinstance(raw, list) else ():
            parsed = parse(item)
            if parsed is None:
                self.records_unreadable += 1
            else:
                yield parsed

    async def _decide(self, request: web.Request) -> web.Response:
        headers: list[tuple[str, str]] = [
            (":path", request.headers.get(ORIGINAL_PATH, "")),
            (":method", request.headers.get(ORIGINAL_METHOD, "")),
        ]
        headers += [
            (k.lower(), v)
            for k, v in request.headers.items()
            if k.lower() not in (ORIGINAL_PATH, ORIGINAL_METHOD, "content-length", "host")
        ]
        return web.json_response(await self.decide(headers, await request.read()))

    async def _observations(self, request: web.Request) -> web.Response:
        try:
            batch = await request.json()
        except ValueError:
            return web.Response(status=400, text="not JSON")
        if isinstance(batch, dict):
            self.reports.add(batch, self.router)
            dropped = batch.get("records_dropped", 0)
            self.ended(batch.get("records"), dropped if isinstance(dropped, int) else 0)
            self.ended_grouped(batch.get("groups"))
        return web.Response(status=204)

    async def _cache_fill(self, request: web.Request) -> web.Response:
        capacity = self.processor.capacity
        request_id = request.headers.get(REQUEST_ID_HEADER, "")
        body = await request.read()
        if capacity is not None and request_id:
            streamed = request.headers.get("content-type", "").startswith("text/event-stream")
            # The filter sends only whole 200 answers; a stream must still have reached [DONE].
            capacity.store(Observation(request_id=request_id, status=200, streamed=streamed), body)
            self.cache_fills += 1
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2 * self.router.config.max_body_bytes + 1024 * 1024)
        app.router.add_get(SNAPSHOT_PATH, self._get_snapshot)
        app.router.add_post(DECIDE_PATH, self._decide)
        app.router.add_post(OBSERVATIONS_PATH, self._observations)
        app.router.add_post(CACHE_FILL_PATH, self._cache_fill)
        return app

    async def start(self, host: str, port: int) -> int:
        listening = await listen(self.app(), host, port)
        self._runner, self.port = listening.runner, listening.port
        log.info("Wasm brain listening on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
