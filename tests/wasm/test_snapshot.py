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
from extproc.scheduler.scheduler import Scheduler
from extproc.wasm.snapshot import build_snapshot as build_routing_snapshot
from extproc.wasm.snapshot import table_can_decide

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
