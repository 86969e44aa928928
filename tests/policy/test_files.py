"""Every shipped policy loads and makes the decision it documents."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from extproc.deploy import LOCAL_STACK_POLICY
from extproc.policy.compile import CompiledPolicy, load_policy
from extproc.policy.types import PolicyInput, Target

POLICIES = Path(__file__).parents[2] / "policies"


@functools.cache
def policy(name: str) -> CompiledPolicy:
    return load_policy(LOCAL_STACK_POLICY if name == "local-stack.yaml" else POLICIES / name)


def decide(name: str, model: str = "llama-3-8b", headers: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return policy(name).evaluate(
        PolicyInput(
            "/v1/chat/completions",
            "POST",
            headers or {},
            model,
            bool(kw.pop("stream", False)),
            str(kw.pop("task", "chat")),
            **kw,
        )  # type: ignore[arg-type]
    )


def test_every_shipped_file_is_exercised_here() -> None:
    tested = {
        "minimal.yaml",
        "cost-routing.yaml",
        "canary.yaml",
        "shadow.yaml",
        "gpu-weighted.yaml",
        "qos-tiers.yaml",
        "capacity.yaml",
        "providers.yaml",
    }
    assert {p.name for p in POLICIES.glob("*.yaml")} == tested


def test_minimal() -> None:
    assert decide("minimal.yaml").targets == (Target("", "llama-3-8b"),)


def test_cost_routing_reference_design() -> None:
    premium = decide("cost-routing.yaml", headers={"x-tenant-id": "bigcorp"})
    assert premium.targets == (
        Target("gpt4-pool", "llama-3-70b"),
        Target("gpt35-pool", "llama-3-8b"),
        Target("local-pool", "qwen-2.5-7b"),
    )
    standard = [
        decide("cost-routing.yaml", headers={"x-tenant-id": "freeloader", "x-user-id": f"u{i}"})
        .targets[0]
        .pool
        for i in range(2000)
    ]
    assert 0.76 < standard.count("gpt35-pool") / 2000 < 0.84
    assert decide("cost-routing.yaml").targets[0] == Target("local-pool", "qwen-2.5-7b")
    upgraded = decide("cost-routing.yaml", headers={"x-tenant-id": "smallco"}, complexity=0.75)
    assert upgraded.tier == "premium" and upgraded.targets[0].pool == "gpt4-pool"


def test_local_stack_premium_rewrites_to_the_large_model() -> None:
    decision = decide("local-stack.yaml", headers={"x-tenant-id": "acme"})
    assert decision.targets[0] == Target("fast", "llama-3-70b")
    assert decision.targets[1].model == "llama-3-8b"
    assert decide("local-stack.yaml", headers={"x-tenant-id": "nightly-jobs"}).priority == -1


def test_gpu_weighted_pool_carries_its_weights() -> None:
    weights = policy("gpu-weighted.yaml").scheduler.gpu_weights
    assert (weights["a100"], weights["t4"]) == (3, 1)


@pytest.mark.parametrize(
    ("headers", "priority"),
    [
        ({"x-tenant-id": "checkout-service"}, 1),
        ({"x-tenant-id": "web-app"}, 0),
        ({"x-tenant-id": "nightly-eval"}, -1),
        ({"x-request-class": "batch"}, -1),
    ],
)
def test_qos_tiers(headers: dict[str, str], priority: int) -> None:
    assert decide("qos-tiers.yaml", headers=headers).priority == priority


def test_capacity_plans_and_cache() -> None:
    smallco = decide("capacity.yaml", "llama-3-70b", {"x-tenant-id": "smallco"})
    assert smallco.limits.tokens_per_minute == 20000 and smallco.limits.over_limit == "downgrade"
    assert smallco.downgrade == Target("", "llama-3-8b")
    assert smallco.cache.ttl_s == 600 and smallco.cache.serve_stale_on_failure
    unknown = decide("capacity.yaml", headers={"x-tenant-id": "someone"})
    assert unknown.limits.requests_per_minute == 60 and unknown.limits.concurrency == 8
    embedding = decide("capacity.yaml", task="embedding")
    assert embedding.cache.ttl_s == 86400 and embedding.cache.cache_nondeterministic


def test_providers_tier_routing_spillover_and_fallback_both_ways() -> None:
    premium = decide("providers.yaml", "gpt-4", {"x-tenant-id": "acme"})
    assert premium.targets == (Target("openai", "gpt-4o"), Target("fast", "llama-3-70b"))
    assert premium.spill is None  # the provider is already the first choice
    standard = decide("providers.yaml", "gpt-4", {"x-tenant-id": "someone"})
    assert standard.targets == (Target("fast", "llama-3-70b"), Target("openai", "gpt-4o"))
    assert standard.spill is None  # no plan, no spill-over
    startup = decide("providers.yaml", "llama-3-70b", {"x-tenant-id": "startup"})
    assert startup.spill is not None and startup.spill.target == Target("openai", "gpt-4o")
    assert startup.spill.ttft_objective_s == 2.0 and startup.hosted_budget_usd_per_hour == 5
    eu = decide("providers.yaml", "gpt-4o-eu")
    assert eu.targets == (Target("azure", "gpt-4o-eu"), Target("fast", "llama-3-70b"))
    compiled = policy("providers.yaml")
    assert compiled.providers["azure"].path_for("/v1/chat/completions", "gpt-4o-eu") == (
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    )
    upstreams = {u.name: u for u in compiled.provider_upstreams()}
    assert upstreams["openai"].key_file.endswith("openai/api-key") and upstreams["azure"].key_env
