"""Every Prometheus metric llm-extproc exports, declared in one place.

Request-path counters use pre-bound label children cached per label tuple, so recording is a
dict lookup and an increment. Fleet gauges (per endpoint, per pool) are not updated on the
request path at all: a custom collector reads the latest FleetSnapshot when Prometheus scrapes.
Label sets are bounded: task, pool, model, tier, outcome, priority, reason, endpoint (fleet
size) — never a user or request id; the cost counter's tenant label is one of the policy's plan
names or "other".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.fleet.state import FleetSnapshot, FloatArray
from extproc.observe import Observation, ResponseBatch

# _created series double the exposition and carry wall-clock timestamps nobody alerts on.
disable_created_metrics()  # type: ignore[no-untyped-call]

PICK_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2)
SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))
# The OpenTelemetry GenAI semantic conventions' recommended bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class _SpeedCollector(Collector):
    def __init__(self, read: Callable[[], tuple[FleetSnapshot, FloatArray, FloatArray]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        snap, prefill, decode = self._read()
        labels = ["endpoint", "pool", "gpu_class"]
        prefill_rate = GaugeMetricFamily(
            "llm_extproc_endpoint_prefill_tokens_per_second",
            "Estimated prefill speed: prompt tokens per second (learned, or prior/fleet median).",
            labels=labels,
        )
        decode_rate = GaugeMetricFamily(
            "llm_extproc_endpoint_decode_tokens_per_second",
            "Estimated decode speed of one stream: output tokens per second.",
            labels=labels,
        )
        for row, endpoint in enumerate(snap.endpoints):
            values = [endpoint.address, endpoint.pool, endpoint.gpu_class]
            if prefill[row] > 0:
                prefill_rate.add_metric(values, 1.0 / float(prefill[row]))
            if decode[row] > 0:
                decode_rate.add_metric(values, 1.0 / float(decode[row]))
        yield from (prefill_rate, decode_rate)


class _FleetCollector(Collector):
    def __init__(
        self,
        snapshot: Callable[[], FleetSnapshot],
        clock: Callable[[], float],
        counters: dict[str, tuple[str, Callable[[], float]]],
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        # Counters kept by other components (outlier detector, scraper), read at scrape time.
        for name, (documentation, read) in self._counters.items():
            yield CounterMetricFamily(name, documentation, value=read())
        snap = self._snapshot()
        labels = ["endpoint", "pool"]
        queue = GaugeMetricFamily(
            "llm_extproc_endpoint_queue_length", "Waiting requests (scraped).", labels=labels
        )
        kv = GaugeMetricFamily(
            "llm_extproc_endpoint_kv_cache_usage_ratio", "KV-cache use 0..1 (scraped).", labels=labels
        )
        running = GaugeMetricFamily(
            "llm_extproc_endpoint_running_requests", "Running requests (scraped).", labels=labels
        )
        age = GaugeMetricFamily(
            "llm_extproc_endpoint_scrape_age_seconds", "Seconds since the last good scrape.", labels=labels
        )
        ready = GaugeMetricFamily(
            "llm_extproc_endpoint_ready", "1 when the endpoint may take traffic.", labels=labels
        )
        ages = snap.age_s(self._clock())
        ready_mask = snap.ready_mask()
        for row, endpoint in enumerate(snap.endpoints):
            values = [endpoint.address, endpoint.pool]
            queue.add_metric(values, float(snap.waiting[row]))
            kv.add_metric(values, float(snap.kv_usage[row]))
            running.add_metric(values, float(snap.running[row]))
            age.add_metric(values, float(min(ages[row], 1e9)))
            ready.add_metric(values, 1.0 if ready_mask[row] else 0.0)
        pool_queue = GaugeMetricFamily(
            "inference_pool_queue_length",
            "Sum of waiting requests in the pool (for autoscalers).",
            labels=["pool"],
        )
        pool_kv = GaugeMetricFamily(
            "inference_pool_average_kv_cache_utilization",
            "Mean KV-cache use of the pool's endpoints.",
            labels=["pool"],
        )
        pool_ready = GaugeMetricFamily(
            "inference_pool_ready_endpoints", "Endpoints that may take traffic.", labels=["pool"]
        )
        for pool, rows in sorted(snap.rows_by_pool.items()):
            pool_queue.add_metric([pool], float(snap.waiting[rows].sum()))
            pool_kv.add_metric([pool], float(np.mean(snap.kv_usage[rows])) if rows.size else 0.0)
            pool_ready.add_metric([pool], float(ready_mask[rows].sum()))
        yield from (queue, kv, running, age, ready, pool_queue, pool_kv, pool_ready)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.requests = Counter(
            "llm_extproc_requests",
            "Requests by task, pool, served model, tier and outcome.",
            ["task", "pool", "model", "tier", "outcome"],
            registry=registry,
        )
        self.pick_duration = Histogram(
            "llm_extproc_pick_duration_seconds",
            "Routing decision time (policy + scheduler).",
            buckets=PICK_BUCKETS,
            registry=registry,
        )
        self.complexity = Histogram(
            "llm_extproc_complexity_score",
            "Prompt complexity scores (predicted difficulty, level L at (L - 1) / 4).",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.strong_gain = Histogram(
            "llm_extproc_strong_gain_score",
            "Prompt strong_gain scores (how likely the strong model beats the weak one).",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "llm_extproc_fallbacks",
            "Fallbacks taken, by kind (endpoint, model) and reason.",
            ["kind", "reason"],
            registry=registry,
        )
        self.sheds = Counter(
            "llm_extproc_shed", "Requests shed with 429, by priority.", ["priority"], registry=registry
        )
        self.inflight = Gauge(
            "llm_extproc_inflight_requests", "Requests routed and not yet finished.", registry=registry
        )
        self.policy_reloads = Counter(
            "llm_extproc_policy_reloads", "Policy reloads by result.", ["result"], registry=registry
        )
        self.policy_info = Gauge(
            "llm_extproc_policy_info", "The active policy version (value 1).", ["version"], registry=registry
        )
        self.policy_error = Gauge(
            "llm_extproc_policy_last_reload_failed",
            "1 while the newest policy file is invalid.",
            registry=registry,
        )
        # Read from responses as they pass (extproc.observe), named after the OpenTelemetry
        # GenAI conventions: gen_ai.client.token.usage, gen_ai.server.time_to_first_token, ...
        genai_labels = ["gen_ai_response_model", "pool"]
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request by type (input, output): from the response's usage, else counted.",
            ["gen_ai_token_type", *genai_labels],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the routing decision to the first generated token (streamed responses).",
            genai_labels,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Mean time between generated tokens after the first (streamed responses).",
            genai_labels,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from the routing decision to the end of the response.",
            [*genai_labels, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.cache_lookups = Counter(
            "llm_extproc_cache_lookups",
            "Response-cache lookups by result (hit, miss, stale: served while every model was down).",
            ["result"],
            registry=registry,
        )
        self.cache_stores = Counter(
            "llm_extproc_cache_stores", "Responses stored in the response cache.", registry=registry
        )
        self.limited = Counter(
            "llm_extproc_limited",
            "Requests over a tenant limit, by limit and action (reject, downgrade).",
            ["limit", "action"],
            registry=registry,
        )
        self.cost = Counter(
            "llm_extproc_cost_usd",
            "Spend in US dollars from token usage and the policy's prices, by tenant (a plan name or "
            '"other"), served model and pool (a provider pool or a self-hosted one with prices).',
            ["tenant", "model", "pool"],
            registry=registry,
        )
        self.spills = Counter(
            "llm_extproc_spillover",
            "Requests sent to a provider because every self-hosted endpoint would miss its TTFT objective.",
            ["provider", "model"],
            registry=registry,
        )
        self.provider_failures = Counter(
            "llm_extproc_provider_failures",
            "Provider answers that sent the request to its self-hosted fallback, by status (429, 5xx, timeout).",
            ["provider", "status"],
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._histogram_children: dict[tuple[Any, ...], Any] = {}
        self._policy_version: str | None = None

    def watch_fleet(
        self,
        snapshot: Callable[[], FleetSnapshot],
        clock: Callable[[], float] = time.monotonic,
        counters: dict[str, tuple[str, Callable[[], float]]] | None = None,
    ) -> None:
        """Per-endpoint and per-pool gauges from the latest snapshot, computed at scrape time;
        ``counters`` maps a counter name (without _total) to (help, reader)."""
        self.registry.register(_FleetCollector(snapshot, clock, counters or {}))

    def watch_speeds(self, read: Callable[[], tuple[FleetSnapshot, FloatArray, FloatArray]]) -> None:
        """Per-endpoint speed estimates (snapshot, prefill and decode seconds per token)."""
        self.registry.register(_SpeedCollector(read))

    def request(self, task: str, pool: str, model: str, tier: str, outcome: str) -> None:
        key = (task, pool, model, tier, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*key)
        child.inc()

    def observe_response(self, observation: Observation) -> None:
        labels = (observation.model, observation.pool)
        status = observation.status
        error_type = "" if 0 < status < 400 else str(status or "reset")
        self._child(self.request_duration, *labels, error_type).observe(observation.duration_s)
        if not math.isnan(observation.ttft_s):
            self._child(self.time_to_first_token, *labels).observe(observation.ttft_s)
        if not math.isnan(observation.time_per_output_token_s):
            self._child(self.time_per_output_token, *labels).observe(observation.time_per_output_token_s)
        usage = observation.usage
        if usage is not None:
            if usage.prompt_tokens is not None:
                self._child(self.token_usage, "input", *labels).observe(usage.prompt_tokens)
            if usage.completion_tokens is not None:
                self._child(self.token_usage, "output", *labels).observe(usage.completion_tokens)

    def observe_responses(self, batch: ResponseBatch) -> None:
        """observe_response for each response of the batch, in one step per histogram."""
        labels = (batch.model, batch.pool)
        status = batch.status
        error_type = "" if 0 < status < 400 else str(status or "reset")
        _observe_many(self._child(self.request_duration, *labels, error_type), batch.duration_s)
        prompt, completion = batch.prompt_tokens, batch.completion_tokens
        reported = (prompt >= 0) | (completion >= 0)  # a usage object at all
        for direction, tokens in (("input", prompt), ("output", completion)):
            counted = tokens[reported & (tokens >= 0)]
            if counted.size:
                _observe_many(self._child(self.token_usage, direction, *labels), counted.astype(np.float64))

    def _child(self, metric: Histogram, *labels: str) -> Any:
        """A labelled child, created once (labels() costs microseconds; one is taken per
        observed response)."""
        key = (metric, *labels)
        child = self._histogram_children.get(key)
        if child is None:
            child = self._histogram_children[key] = metric.labels(*labels)
        return child

    def policy_loaded(self, version: str, ok: bool) -> None:
        self.policy_reloads.labels("success" if ok else "failure").inc()
        self.policy_error.set(0 if ok else 1)
        if ok and version != self._policy_version:
            if self._policy_version is not None:
                self.policy_info.remove(self._policy_version)
            self.policy_info.labels(version).set(1)
            self._policy_version = version

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _observe_many(child: Any, values: FloatArray) -> None:
    """Histogram.observe for each value, in one step: the values' bucket counts and sum are
    added at once (what observe does per value: sum += value; the first bucket whose upper
    bound is >= value += 1). prometheus_client has no bulk observe, so this uses the child's
    _sum, _buckets and _upper_bounds; tests/observability compares it with observe one by one."""
    if not values.size:
        return
    bounds = child._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    child._sum.inc(float(values.sum()))
    for bucket in np.flatnonzero(counts[: len(bounds)]):
        child._buckets[bucket].inc(int(counts[bucket]))
