"""The brain's side of the filter's groups (extproc.wasm.brain.Brain.ended_grouped): requests
reported as numbers must feed the histograms, spend and per-response consumers exactly as the
same requests reported one record each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from extproc.config import ServerConfig
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot
from extproc.observability.decision_log import DecisionLog, DecisionLogConfig
from extproc.observability.metrics import Metrics, _observe_many
from extproc.observability.telemetry import Telemetry
from extproc.observe import Observation
from extproc.policy.compile import load_policy
from extproc.router import Router
from extproc.scheduler.scheduler import Scheduler
from extproc.server import ExternalProcessor
from extproc.wasm.brain import Brain
from extproc.wasm.records import GROUP_VALUES, RECORD_FIELDS

POLICY = """
tenants:
  header: x-tenant-id
  plans:
    gold: {tier: premium}
pools:
  - {name: p, models: [m], prices: {m: {input_per_1m: 1, output_per_1m: 2}}}
default: {}
"""
A, B = "10.0.0.1:8000", "10.0.0.2:8000"

# (tenant, endpoint, answered, status, streamed, duration µs, ttft µs, prompt, completion)
REQUESTS = [
    ("gold", A, True, 200, False, 12_000, 11_000, 30, 7),
    ("gold", A, True, 200, False, 250_000, 240_000, 2_000, 300),
    ("gold", A, True, 200, False, 9_000_000, 8_000_000, -1, -1),  # no usage object
    ("", A, True, 200, False, 40_000, 39_000, 12, -1),
    ("", B, True, 503, False, 1_000, 900, -1, -1),
    ("", B, False, 0, False, 5_000, -1, -1, -1),  # reset before any response
    ("gold", B, True, 200, True, 3_000_000, 150_000, 100, 50),
    ("", B, True, 200, True, 800_000, 90_000, 10, 1),
]


def brain_for(tmp_path: Path) -> tuple[Brain, list[Observation]]:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    now = time.monotonic()
    fleet = FleetState()
    endpoints = [Endpoint(a, pool="p", models=("m",)) for a in (A, B)]
    metrics = {e.address: EndpointMetrics(scraped_at=now) for e in endpoints}
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now), synced=True)
    config = ServerConfig(complexity_header=False, metrics_port=0)
    router = Router(config, fleet, Scheduler(), InFlight(), policy=lambda: policy)
    router.metrics = Metrics()
    seen: list[Observation] = []  # what the per-response consumers (speeds) are handed
    telemetry = Telemetry(
        DecisionLog(DecisionLogConfig()),
        metrics=router.metrics,
        on_observation=seen.append,
        expect_observer=False,
    )
    return Brain(ExternalProcessor(config, router, telemetry=telemetry)), seen


def as_record(index: int, request: tuple[Any, ...]) -> list[object]:
    tenant, endpoint, answered, status, streamed, duration, ttft, prompt, completion = request
    values: dict[str, object] = {name: "" for name in RECORD_FIELDS}
    values.update(
        request_id=f"r{index}",
        task="chat",
        tenant=tenant,
        model_requested="m",
        model_served="m",
        endpoints=f"{endpoint},{B if endpoint == A else A}",
        served_by=endpoint if answered else "",
        status=status,
        outcome="routed",
        streamed=int(streamed),
        ttft_us=ttft,
        duration_us=duration,
        prompt_tokens=prompt,
        completion_tokens=completion,
        escalated=0,
    )
    return [values[name] for name in RECORD_FIELDS]


def as_groups(requests: list[tuple[Any, ...]]) -> list[list[object]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for tenant, endpoint, answered, status, streamed, *numbers in requests:
        groups.setdefault((tenant, endpoint, answered, status, streamed), []).extend(numbers)
    return [
        [tenant, "m", "", endpoint, int(answered), status, int(streamed), values]
        for (tenant, endpoint, answered, status, streamed), values in groups.items()
    ]


def exposition(brain: Brain) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = brain.router.metrics
    assert metrics is not None
    samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_groups_feed_what_the_same_requests_as_records_feed(tmp_path: Path) -> None:
    by_records, seen_records = brain_for(tmp_path / "records")
    by_groups, seen_groups = brain_for(tmp_path / "groups")
    by_records.ended([as_record(i, r) for i, r in enumerate(REQUESTS)], 0)
    by_groups.ended_grouped(as_groups(REQUESTS))
    assert by_groups.status()["grouped"] == len(REQUESTS) and by_groups.status()["records_unreadable"] == 0
    expected, got = exposition(by_records), exposition(by_groups)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    histograms = {name for name, _ in expected if name.startswith("gen_ai_")}
    assert {"gen_ai_server_request_duration_seconds_bucket", "gen_ai_client_token_usage_bucket"} <= histograms
    assert any(name.startswith("llm_extproc_cost") for name, _ in expected)  # the priced pool's spend
    # Streams reach the per-response consumers one by one, with the same values.
    streamed = [
        (o.endpoint, o.ttft_s, o.time_per_output_token_s, o.usage) for o in seen_records if o.streamed
    ]
    assert len(streamed) == 2
    assert [
        (o.endpoint, o.ttft_s, o.time_per_output_token_s, o.usage) for o in seen_groups if o.streamed
    ] == streamed
    assert by_groups.processor.telemetry.observations == len(REQUESTS)  # type: ignore[union-attr]


def test_a_group_that_is_not_of_this_shape_is_counted_not_fed(tmp_path: Path) -> None:
    brain, _ = brain_for(tmp_path)
    good = as_groups(REQUESTS[:1])[0]
    brain.ended_grouped([good[:7], [*good[:7], [1, 2, 3]], [*good[:7], ["x"] * len(GROUP_VALUES)], "x", good])
    assert brain.status()["records_unreadable"] == 4
    assert brain.status()["grouped"] == 1


@pytest.mark.parametrize("values", [[0.004, 0.01, 0.0100001, 7.0, 1e9], [3.0, 3.0, 1.0, 1024.0, 5e6, 0.0]])
def test_observe_many_equals_observe_one_by_one(values: list[float]) -> None:
    one, many = (
        Histogram("one", "", buckets=(0.01, 1, 4, 1024), registry=CollectorRegistry()),
        Histogram("many", "", buckets=(0.01, 1, 4, 1024), registry=CollectorRegistry()),
    )
    for value in values:
        one.observe(value)
    _observe_many(many, np.array(values))
    samples = {s.name.removeprefix("one"): s.value for s in next(iter(one.collect())).samples}
    assert {
        s.name.removeprefix("many"): s.value for s in next(iter(many.collect())).samples
    } == pytest.approx(samples)
