"""The brain's side of concurrency limits on the Wasm data path (extproc.wasm.brain): a routed
request's lease is held until the filter's record of it arrives, and never when the filter has
probably given up waiting for the decision, or past its time to live."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from extproc.admission import Capacity
from extproc.capacity.limits import MemoryLimiter
from extproc.config import ServerConfig
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot
from extproc.policy.compile import load_policy
from extproc.router import Router
from extproc.scheduler.scheduler import Scheduler
from extproc.server import ExternalProcessor
from extproc.wasm.brain import LATE_DECISION_S, LEASE_TTL_S, Brain
from extproc.wasm.records import RECORD_FIELDS

POLICY = """
tenants:
  header: x-tenant-id
  plans:
    solo: {tier: standard, limits: {concurrency: 1}}
pools:
  - {name: p, models: [m]}
default: {}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.step = 0.0  # added on every read: a slow decision

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def brain(tmp_path: Path) -> Brain:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    now = time.monotonic()
    fleet = FleetState()
    endpoints = [Endpoint("10.0.0.1:8000", pool="p", models=("m",))]
    metrics = {e.address: EndpointMetrics(scraped_at=now) for e in endpoints}
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now - 30), synced=True)
    fleet.publish(
        build_snapshot(endpoints, metrics, version=2, previous=fleet.snapshot, now=now), synced=True
    )
    config = ServerConfig(complexity_header=False, metrics_port=0)
    router = Router(config, fleet, Scheduler(), InFlight(), policy=lambda: policy)
    processor = ExternalProcessor(config, router, capacity=Capacity(limiter=MemoryLimiter()))
    return Brain(processor, clock=Clock())


async def decide(brain: Brain, request_id: str) -> dict[str, object]:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = [
        (":path", "/v1/chat/completions"),
        (":method", "POST"),
        ("content-type", "application/json"),
        ("x-tenant-id", "solo"),
        ("x-request-id", request_id),
    ]
    return await brain.decide(headers, body)


def record(request_id: str) -> list[object]:
    values: dict[str, object] = {name: "" for name in RECORD_FIELDS}
    numbers = ("status", "ttft_us", "duration_us", "prompt_tokens", "completion_tokens")
    values.update({name: -1 for name in numbers})
    values.update(
        request_id=request_id,
        task="chat",
        tenant="solo",
        model_served="m",
        endpoints="10.0.0.1:8000",
        served_by="10.0.0.1:8000",
        status=200,
        streamed=0,
        escalated=1,
    )
    return [values[name] for name in RECORD_FIELDS]


async def test_the_lease_is_held_until_the_requests_record_arrives(brain: Brain) -> None:
    first = await decide(brain, "r1")
    assert first["action"] == "route" and first["lease"] is True
    refused = await decide(brain, "r2")
    assert refused["action"] == "respond" and refused["status"] == 429
    brain.ended([record("r1")], 0)
    assert brain.status()["leases_held"] == 0
    await brain.processor.capacity.drain()  # type: ignore[union-attr]
    assert (await decide(brain, "r3"))["action"] == "route"


async def test_a_late_decision_keeps_no_lease(brain: Brain) -> None:
    clock = brain.clock
    assert isinstance(clock, Clock)
    clock.step = LATE_DECISION_S + 0.01  # the filter gave up waiting: it will send no record
    answer = await decide(brain, "slow")
    assert answer["action"] == "route" and "lease" not in answer
    clock.step = 0.0
    await brain.processor.capacity.drain()  # type: ignore[union-attr]
    assert (await decide(brain, "next"))["action"] == "route"


async def test_a_lease_whose_record_never_comes_expires(brain: Brain) -> None:
    assert (await decide(brain, "lost"))["action"] == "route"
    clock = brain.clock
    assert isinstance(clock, Clock)
    clock.now += LEASE_TTL_S + 1
    brain.ended([], 0)  # any batch ages the held leases
    assert brain.status()["leases_expired"] == 1
    await brain.processor.capacity.drain()  # type: ignore[union-attr]
    assert (await decide(brain, "after"))["action"] == "route"
