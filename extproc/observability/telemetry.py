"""Joins what the two ext_proc streams of one request saw, then records it.

The routing stream knows the decision (rule, tenant, candidates, scores) and the status; the
observation stream (Envoy's observability-mode filter) knows tokens, TTFT and per-token
latency. They end at about the same time in either order, joined by ``x-request-id``. Only
requests that are logged (sampled by request id, or failed) or traced (sampled by the caller's
``traceparent``) are joined; every observation feeds metrics and the latency scorer.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from extproc.observability.decision_log import DecisionLog
from extproc.observability.metrics import Metrics
from extproc.observability.tracing import DecisionTracer
from extproc.observe import Observation, ResponseBatch


@dataclass(slots=True)
class RouteRecord:
    """The routing stream's half: created only for requests that are logged or traced."""

    request_id: str
    traceparent: str = ""
    task: str = ""
    started: float = 0.0  # monotonic
    started_unix_ns: int = 0
    tenant: str | None = None
    rule: str = ""
    tier: str = ""
    priority: str = ""  # the policy's priority name, when it set one
    model_requested: str = ""
    model_served: str = ""
    pool: str = ""
    endpoints: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    speeds: list[dict[str, float | str]] | None = None
    complexity: float | None = None
    strong_gain: float | None = None
    complexity_features: list[str] | None = None  # e.g. ["proof cue +0.20", "length 1,900 tokens +0.11"]
    decision_us: float = 0.0
    status: int = 0
    served_by: str = ""
    outcome: str = "routed"
    error: str = ""
    prompt: str | None = None
    finished: float = 0.0


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 3)


class Telemetry:
    def __init__(
        self,
        log: DecisionLog,
        tracer: DecisionTracer | None = None,
        metrics: Metrics | None = None,
        on_ttft: Callable[[str, float], None] | None = None,
        on_observation: Callable[[Observation], None] | None = None,
        pool_of: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        join_timeout_s: float = 10.0,
        max_pending: int = 10_000,
        expect_observer: bool = True,
    ) -> None:
        self.log = log
        self.tracer = tracer
        self.metrics = metrics
        self.on_ttft = on_ttft
        self.on_observation = on_observation
        self.pool_of = pool_of
        self.clock = clock
        self.join_timeout_s = join_timeout_s
        self.max_pending = max_pending
        # Routing records wait (up to join_timeout_s) for their observation only when Envoy
        # runs the observer filter (expected by configuration, or seen).
        self.expect_observer = expect_observer
        self.observers_seen = False
        self.observations = 0
        self._pending: OrderedDict[str, tuple[float, RouteRecord | None, Observation | None]] = OrderedDict()

    @property
    def active(self) -> bool:
        return self.log.enabled or self.tracer is not None

    def wants(self, request_id: str, traceparent: str) -> bool:
        """Keep a record of this request? Cheap enough to ask on every request."""
        if self.log.sampled(request_id):
            return True
        return self.tracer is not None and bool(traceparent) and self.tracer.sampled(traceparent)

    def routed(self, record: RouteRecord) -> None:
        """The routing stream ended (the response is over, or we answered it ourselves)."""
        record.finished = self.clock()
        if record.error or not (self.expect_observer or self.observers_seen) or not record.request_id:
            self._emit(record, None)
            return
        self._join(record.request_id, record, None)

    def observed(self, observation: Observation, traceparent: str) -> None:
        self.observers_seen = True
        self._feed(observation)
        if observation.request_id and self.wants(observation.request_id, traceparent):
            self._join(observation.request_id, None, observation)

    def logs(self, request_id: str, failed: bool) -> bool:
        """Whether this request gets a decision-log line (errors always, others sampled)."""
        return self.log.enabled and (failed or self.log.sampled(request_id))

    def completed(self, record: RouteRecord | None, observation: Observation | None) -> None:
        """A request whose decision and response arrive together (the Wasm filter's records):
        metrics from its response, and its decision-log line (``record``, given when ``logs``)."""
        if observation is not None:
            self._feed(observation)
        if record is not None and self.logs(record.request_id, bool(record.error)):
            self._emit(record, observation)

    def completed_many(self, batch: ResponseBatch) -> None:
        """Non-streamed responses, none of them logged (the Wasm filter's groups): what _feed
        does for each, in one step. Without a time to first token, only the metrics take them."""
        self.observations += len(batch.duration_s)
        if self.metrics is not None:
            self.metrics.observe_responses(batch)

    def _feed(self, observation: Observation) -> None:
        self.observations += 1
        if not observation.pool and self.pool_of is not None and observation.endpoint:
            observation.pool = self.pool_of(observation.endpoint)
        if self.metrics is not None:
            self.metrics.observe_response(observation)
        if self.on_ttft is not None and observation.endpoint and not math.isnan(observation.ttft_s):
            self.on_ttft(observation.endpoint, observation.ttft_s)
        if self.on_observation is not None:
            self.on_observation(observation)

    def _join(self, request_id: str, record: RouteRecord | None, observation: Observation | None) -> None:
        now = self.clock()
        waiting = self._pending.pop(request_id, None)
        if waiting is not None:
            record = record or waiting[1]
            observation = observation or waiting[2]
        if record is not None and observation is not None:
            self._emit(record, observation)
        elif record is not None or observation is not None:
            self._pending[request_id] = (now, record, observation)
        self._expire(now)

    def _expire(self, now: float) -> None:
        pending = self._pending
        while pending:
            request_id, (since, record, observation) = next(iter(pending.items()))
            if now - since < self.join_timeout_s and len(pending) <= self.max_pending:
                break
            del pending[request_id]
            if record is not None:  # an observation without its decision is not worth a line
                self._emit(record, observation)

    def expire(self) -> None:
        """Write records whose observation is overdue (called periodically when idle)."""
        self._expire(self.clock())

    def flush(self) -> None:
        """Write everything still waiting for its other half (shutdown)."""
        self._expire(math.inf)

    def _emit(self, record: RouteRecord, observation: Observation | None) -> None:
        if observation is not None:
            # When the observer reports responses, Envoy skips the routing stream's
            # response-headers phase: status and the serving endpoint come from the observation.
            record.status = record.status or observation.status
            record.served_by = record.served_by or observation.endpoint
        line: dict[str, Any] = {
            "ts": record.started_unix_ns / 1e9,
            "request_id": record.request_id,
            "task": record.task,
            "tenant": record.tenant,
            "rule": record.rule,
            "tier": record.tier,
            "model_requested": record.model_requested,
            "model_served": record.model_served,
            "pool": record.pool,
            "endpoints": record.endpoints,
            "served_by": record.served_by or (record.endpoints[0] if record.endpoints else ""),
            "scores": record.scores,
            "speeds": record.speeds,
            "complexity": record.complexity,
            "strong_gain": record.strong_gain,
            "complexity_features": record.complexity_features,
            "decision_us": round(record.decision_us, 1),
            "status": record.status,
            "outcome": record.outcome,
            "duration_ms": round((record.finished - record.started) * 1000, 3),
        }
        if record.priority:
            line["priority"] = record.priority
        if record.error:
            line["error"] = record.error
        if observation is not None:
            usage = observation.usage
            line["streamed"] = observation.streamed
            line["ttft_ms"] = _ms(observation.ttft_s)
            line["time_per_output_token_ms"] = _ms(observation.time_per_output_token_s)
            line["prompt_tokens"] = usage.prompt_tokens if usage else None
            line["completion_tokens"] = usage.completion_tokens if usage else None
        if record.prompt is not None:
            line["prompt"] = record.prompt
        if self.log.enabled and (record.error or self.log.sampled(record.request_id)):
            self.log.write(line)
        tracer = self.tracer
        if tracer is not None and record.traceparent and tracer.sampled(record.traceparent):
            end_ns = record.started_unix_ns + int((record.finished - record.started) * 1e9)
            attributes: dict[str, Any] = {
                "llm.model": record.model_served or record.model_requested,
                "llm.model_requested": record.model_requested,
                "llm.tenant": record.tenant,
                "llm.tier": record.tier,
                "llm.rule": record.rule,
                "llm.complexity": record.complexity,
                "llm.strong_gain": record.strong_gain,
                "llm.endpoint": line["served_by"],
                "llm.endpoints": ",".join(record.endpoints),
                "llm.fallback": bool(
                    record.served_by and record.endpoints and record.served_by != record.endpoints[0]
                ),
                "llm.outcome": record.outcome,
                "http.response.status_code": record.status,
                "gen_ai.request.model": record.model_requested,
                "gen_ai.response.model": record.model_served,
            }
            if observation is not None:
                attributes["gen_ai.usage.input_tokens"] = line["prompt_tokens"]
                attributes["gen_ai.usage.output_tokens"] = line["completion_tokens"]
                tpot = observation.time_per_output_token_s
                if not math.isnan(tpot) and tpot > 0:
                    attributes["llm.tokens_per_second"] = round(1.0 / tpot, 3)
            tracer.record(record.traceparent, record.started_unix_ns, end_ns, attributes, bool(record.error))
