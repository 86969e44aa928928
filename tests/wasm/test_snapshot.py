"""Compiling a policy into the Wasm filter's decision table (extproc.wasm.snapshot)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    assert snapshot["format"] == 4
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


PROVIDER_POLICY = """
tenants:
  header: x-tenant-id
  plans:
    spiller: {hosted: {spillover: true}}
    plain: {tier: premium}
pools:
  - {name: p, models: [fleet-only, both, spills, chained]}
  - name: openai
    kind: provider
    models: [hosted-only, both]
    provider:
      base_url: https://api.provider.test/v1
      credential: {env: NOT_READ_BY_THE_SNAPSHOT}
    prices: {hosted-only: {input_per_1m: 1, output_per_1m: 2}, both: {input_per_1m: 1, output_per_1m: 2}}
models:
  hosted-alias: {model: both, pool: openai}
fallbacks:
  chained: [hosted-only]
spillover:
  ttft_objective_s: 1
  targets: {spills: {model: hosted-only, pool: openai}}
default: {}
"""


def provider_routes(tmp_path: Path, policy_text: str = PROVIDER_POLICY) -> dict[str, Any]:
    now = time.monotonic()
    fleet = FleetState()
    endpoints = [Endpoint("10.0.0.1:8000", pool="p", models=("fleet-only", "both", "spills", "chained"))]
    metrics = {e.address: EndpointMetrics(scraped_at=now) for e in endpoints}
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now - 30), synced=True)
    fleet.publish(
        build_snapshot(endpoints, metrics, version=2, previous=fleet.snapshot, now=now), synced=True
    )
    (tmp_path / "p.yaml").write_text(policy_text)
    policy = load_policy(tmp_path / "p.yaml")
    router = Router(
        ServerConfig(complexity_header=False), fleet, Scheduler(), InFlight(), policy=lambda: policy
    )
    snapshot = build_routing_snapshot(router, now)
    assert not snapshot["escalate_all"]
    routes: dict[str, Any] = snapshot["routes"]
    return routes


ESCALATE = {"escalate": True}


def test_a_provider_policy_leaves_rows_that_cannot_reach_a_provider_to_the_filter(tmp_path: Path) -> None:
    routes = provider_routes(tmp_path)
    for task in ("chat", "completion", "embedding"):
        for stream in (0, 1):
            for tenant in ("*", "spiller", "plain"):
                # A model only the fleet serves, and one both serve (the fleet's unless a rule,
                # alias, fallback or spill-over names the provider): the filter's.
                for model in ("fleet-only", "both"):
                    entry = routes[f"{task}|{stream}|{model}|{tenant}"]
                    assert entry != ESCALATE, (task, stream, model, tenant)
                    assert entry["targets"] == [[model, "p"]]
            # A spill-over model is the filter's for tenants whose plan has no spill-over.
            for tenant in ("*", "plain"):
                assert routes[f"{task}|{stream}|spills|{tenant}"]["targets"] == [["spills", "p"]]


def test_rows_that_may_reach_a_provider_are_escalated(tmp_path: Path) -> None:
    routes = provider_routes(tmp_path)
    for task in ("chat", "completion", "embedding"):
        for stream in (0, 1):
            for tenant in ("*", "spiller", "plain"):
                # Served only by the provider; an alias naming the provider's pool.
                for model in ("hosted-only", "hosted-alias"):
                    assert routes[f"{task}|{stream}|{model}|{tenant}"] == ESCALATE, (model, tenant)
            # Spill-over: the fleet's model, but the tenant may overflow to the provider.
            assert routes[f"{task}|{stream}|spills|spiller"] == ESCALATE


def test_a_fallback_chain_is_the_filters_up_to_its_first_provider_target(tmp_path: Path) -> None:
    routes = provider_routes(tmp_path)
    for tenant in ("*", "spiller", "plain"):
        # The fleet's model first; the provider only when the fleet has no endpoint for it, which
        # the filter hands to the brain instead of answering 503.
        assert routes[f"chat|0|chained|{tenant}"]["targets"] == [["chained", "p"]]
        assert routes[f"chat|0|chained|{tenant}"]["then_escalate"] is True
        assert "then_escalate" not in routes[f"chat|0|fleet-only|{tenant}"]


def test_tenants_without_a_plan_spill_over_by_default_hosted(tmp_path: Path) -> None:
    routes = provider_routes(
        tmp_path,
        PROVIDER_POLICY.replace("    plain: {tier: premium}\n", "  default_hosted: {spillover: true}\n"),
    )
    assert routes["chat|0|spills|*"] == ESCALATE
    assert routes["chat|0|fleet-only|*"]["targets"] == [["fleet-only", "p"]]


def test_a_rule_sending_a_tier_to_the_provider_escalates_only_that_tiers_rows(tmp_path: Path) -> None:
    ruled = PROVIDER_POLICY.replace(
        "default: {}",
        "rules:\n  - {name: premium-hosted, match: {tier: [premium], model: [both]}, "
        "route: {model: both, pool: openai}, fallback: [fleet-only]}\ndefault: {}",
    )
    routes = provider_routes(tmp_path, ruled)
    assert routes["chat|0|both|plain"] == ESCALATE
    assert routes["chat|0|both|*"]["targets"] == [["both", "p"]]
    assert routes["chat|0|both|spiller"]["targets"] == [["both", "p"]]


def test_prefix_blocks_and_weights_are_the_profiles() -> None:
    now = time.monotonic()
    fleet = FleetState()
    endpoints = [Endpoint("10.0.0.1:8000", models=("m",))]
    metrics = {"10.0.0.1:8000": EndpointMetrics(scraped_at=now)}
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now), synced=True)

    def snapshot_of(scorers: dict[str, Any]) -> dict[str, Any]:
        scheduler = Scheduler(SchedulerConfig.from_dict({"scorers": scorers}))
        router = Router(
            ServerConfig(complexity_header=False), fleet, scheduler, InFlight(), policy=lambda: None
        )
        return build_routing_snapshot(router, now)

    default = snapshot_of({})
    assert (default["prefix_block_bytes"], default["prefix_max_blocks"], default["prefix_weight"]) == (
        64,
        64,
        2_000_000,
    )
    tuned = snapshot_of({"prefix": {"weight": 1.5, "block_chars": 128, "max_blocks": 16}})
    assert (tuned["prefix_block_bytes"], tuned["prefix_max_blocks"], tuned["prefix_weight"]) == (
        128,
        16,
        1_500_000,
    )
    assert not tuned["escalate_all"]
    # A session scorer weighed 0 gives no session bonus on either path.
    assert snapshot_of({"session": 0})["session_weight"] == 0
    # Blocks covering more than the filter hashes: the brain decides everything.
    assert snapshot_of({"prefix": {"weight": 2.0, "block_chars": 1024, "max_blocks": 128}})["escalate_all"]
