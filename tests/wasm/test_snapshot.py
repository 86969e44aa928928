"""Compiling a policy into the Wasm filter's decision table (extproc.wasm.snapshot)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from extproc.config import ServerConfig
from extproc.deploy import LOCAL_STACK_POLICY
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot
from extproc.policy.compile import load_policy
from extproc.router import Router
from extproc.scheduler.config import SchedulerConfig
from extproc.scheduler.scheduler import Scheduler
from extproc.wasm.snapshot import LOAD_SCALE, table_can_decide
from extproc.wasm.snapshot import build_snapshot as build_routing_snapshot

BASE = "pools:\n  - {name: p, models: [m]}\n"


@pytest.mark.parametrize(
    ("rules", "decidable"),
    [
        ("rules:\n  - {name: r, match: {model: [m], stream: true}, timeout_s: 5}\n", True),
        (
            "rules:\n  - {name: r, match: {any_of: [{tier: [premium]}, {task: [chat]}]}, priority: batch}\n",
            True,
        ),
        ("rules:\n  - {name: r, match: {headers: {x-a: {present: true}}}, priority: batch}\n", False),
        ("rules:\n  - {name: r, match: {any_of: [{complexity: {gt: 0.5}}]}, priority: batch}\n", False),
        ("rules:\n  - {name: r, match: {model: [m]}, cache: {ttl_s: 5}}\n", False),
        (
            "rules:\n  - {name: r, split: {targets: [{model: m, weight: 50}, {model: m, weight: 50}]}}\n",
            False,
        ),
    ],
)
def test_only_policies_keyed_on_task_stream_model_tenant_become_a_table(
    rules: str, decidable: bool, tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text(BASE + rules + "default: {}\n")
    assert table_can_decide(load_policy(tmp_path / "p.yaml")) is decidable


def test_local_stack_policy_table_escalates_only_the_tenant_with_a_complexity_upgrade() -> None:
    now = time.monotonic()
    fleet = FleetState()
    endpoints = [
        Endpoint("10.0.0.1:8000", pool="fast", models=("llama-3-8b", "llama-3-70b")),
        Endpoint("10.0.0.2:8000", pool="slow", models=("llama-3-8b",)),
    ]
    metrics = {e.address: EndpointMetrics(scraped_at=now) for e in endpoints}
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now - 30), synced=True)
    fleet.publish(
        build_snapshot(endpoints, metrics, version=2, previous=fleet.snapshot, now=now), synced=True
    )
    policy = load_policy(LOCAL_STACK_POLICY)
    router = Router(
        ServerConfig(complexity_header=False), fleet, Scheduler(), InFlight(), policy=lambda: policy
    )
    snapshot = build_routing_snapshot(router, now)
    routes = snapshot["routes"]
    assert not snapshot["escalate_all"]
    assert routes["chat|0|llama-3-8b|startup"] == {"escalate": True}
    assert routes["chat|0|llama-3-8b|acme"]["targets"][0] == ["llama-3-70b", "fast"]
    assert ["x-llm-tier", "premium"] in routes["chat|0|llama-3-8b|acme"]["headers"]
    assert routes["chat|0|llama-3-8b|*"]["targets"][0] == ["llama-3-8b", ""]
    assert [e[0] for e in snapshot["candidates"]["llama-3-70b|fast"]["endpoints"]] == ["10.0.0.1:8000"]
    # The same content, the same version; anything else changes it.
    assert build_routing_snapshot(router, now)["version"] == snapshot["version"]


def test_kept_rows_carry_the_load_scorers_fleet_terms_and_the_scraped_queue() -> None:
    now = time.monotonic()
    fleet = FleetState()
    endpoints = [
        Endpoint(f"10.0.0.{i}:8000", models=("m",), gpu_class=c) for i, c in ((1, "h100"), (2, "t4"))
    ]
    metrics = {
        "10.0.0.1:8000": EndpointMetrics(waiting=3.0, running=5.0, scraped_at=now),
        "10.0.0.2:8000": EndpointMetrics(waiting=0.0, running=1.0, scraped_at=now),
    }
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now - 30), synced=True)
    fleet.publish(
        build_snapshot(endpoints, metrics, version=2, previous=fleet.snapshot, now=now), synced=True
    )
    scheduler = Scheduler(SchedulerConfig(gpu_weights={"h100": 5.0, "t4": 1.0}))
    router = Router(ServerConfig(complexity_header=False), fleet, scheduler, InFlight(), policy=lambda: None)
    snapshot = build_routing_snapshot(router, now)
    assert snapshot["format"] == 2
    assert snapshot["load_weight"] == 3_000_000  # the load scorer's default weight, in millionths
    rows = [fleet.snapshot.index[e[0]] for e in snapshot["candidates"]["m|"]["endpoints"]]
    loaded = scheduler.load_terms(fleet.snapshot, rows, now)
    assert loaded is not None
    per_token, step, per_queued = loaded[1]
    for i, entry in enumerate(snapshot["candidates"]["m|"]["endpoints"]):
        assert entry[2:5] == [round(float(t[i]) * LOAD_SCALE) for t in (per_token, step, per_queued)]
        assert entry[5:] == [int(fleet.snapshot.waiting[rows[i]]), int(fleet.snapshot.running[rows[i]])]
    by_address = {e[0]: e for e in snapshot["candidates"]["m|"]["endpoints"]}
    # The prior says the H100 is 5x the T4: its prompt tokens cost a fifth.
    assert abs(by_address["10.0.0.2:8000"][2] - 5 * by_address["10.0.0.1:8000"][2]) <= 5  # rounding
    # With the load scorer off, entries are (address, score) only.
    off = Scheduler(SchedulerConfig.from_dict({"scorers": {"load": 0}}))
    plain = build_routing_snapshot(
        Router(ServerConfig(complexity_header=False), fleet, off, InFlight(), policy=lambda: None), now
    )
    assert plain["load_weight"] == 0
    assert [len(e) for e in plain["candidates"]["m|"]["endpoints"]] == [2, 2]
