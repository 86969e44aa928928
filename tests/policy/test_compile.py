"""Matchers and actions of compiled policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.policy.compile import CompiledPolicy, PolicyError, load_policy
from extproc.policy.types import PolicyInput, Target

POLICIES = Path(__file__).parents[2] / "policies"


def write(tmp_path: Path, text: str) -> CompiledPolicy:
    (tmp_path / "p.yaml").write_text(text)
    return load_policy(tmp_path / "p.yaml")


def inp(model: str = "m", stream: bool = False, task: str = "chat", **kw: object) -> PolicyInput:
    headers = kw.pop("headers", {})
    return PolicyInput(
        path="/v1/chat/completions",
        method="POST",
        headers=headers,
        model=model,
        stream=stream,
        task=task,
        **kw,
    )  # type: ignore[arg-type]


POLICY = """
tenants: {header: x-tenant-id, plans: {gold: {tier: premium}, silver: {tier: standard, allow_upgrade: true}}}
pools:
  - {name: big, models: [large]}
  - {name: small, models: [m]}
models:
  gpt-4: {model: large, pool: big}
fallbacks:
  gpt-4: [m]
rules:
  - {name: header-exact, match: {headers: {x-a: {exact: "1"}}}, route: {model: gpt-4}}
  - {name: header-prefix, match: {headers: {x-b: {prefix: "ab"}}}, timeout_s: 7}
  - {name: header-regex, match: {headers: {x-c: {regex: "^v[0-9]+$"}}}, priority: batch}
  - {name: header-present, match: {headers: {x-d: {present: true}}}, reject: {status: 403, message: "no"}}
  - {name: path, match: {path: {prefix: /v1/embed}}, retries: {count: 3, per_try_timeout_s: 2}}
  - {name: method, match: {method: [get]}, timeout_s: 1}
  - {name: model, match: {model: [special]}, route: {model: m}}
  - {name: model-re, match: {model_regex: "^tiny-"}, route: {model: m, pool: small}}
  - {name: complexity, match: {complexity: {gt: 0.9}, task: [chat]}, route: {model: gpt-4}}
  - {name: tokens, match: {prompt_tokens: {gte: 1000}, max_tokens: {lt: 10}}, timeout_s: 5}
  - {name: tier, match: {tier: [premium]}, route: {model: gpt-4}}
  - {name: either, match: {any_of: [{stream: true}, {task: [embedding]}]}, timeout_s: 9}
default: {}
"""


def test_each_matcher(tmp_path: Path) -> None:
    policy = write(tmp_path, POLICY)
    assert policy.evaluate(inp(headers={"x-a": "1"})).rule == "header-exact"
    assert policy.evaluate(inp(headers={"x-a": "2"})).rule == "default"
    assert policy.evaluate(inp(headers={"x-b": "abc"})).rule == "header-prefix"
    assert policy.evaluate(inp(headers={"x-c": "v12"})).rule == "header-regex"
    assert policy.evaluate(inp(headers={"x-c": "v12x"})).rule == "default"
    assert policy.evaluate(inp(headers={"x-d": ""})).rule == "header-present"
    assert policy.evaluate(PolicyInput("/v1/embeddings", "POST", {}, "m", False, "embedding")).rule == "path"
    assert policy.evaluate(PolicyInput("/v1/x", "GET", {}, "m", False, "chat")).rule == "method"
    assert policy.evaluate(inp("special")).rule == "model"
    assert policy.evaluate(inp("tiny-1")).rule == "model-re"
    assert policy.evaluate(inp(complexity=0.95)).rule == "complexity"
    assert policy.evaluate(inp(complexity=0.95, task="completion")).rule == "default"
    assert policy.evaluate(inp(prompt_tokens=1000, max_tokens=5)).rule == "tokens"
    assert policy.evaluate(inp(prompt_tokens=1000)).rule == "default"
    assert policy.evaluate(inp(headers={"x-tenant-id": "gold"})).rule == "tier"
    assert policy.evaluate(inp(stream=True)).rule == "either"


def test_actions_and_headers(tmp_path: Path) -> None:
    policy = write(tmp_path, POLICY)
    premium = policy.evaluate(inp(headers={"x-a": "1"}))
    assert premium.targets == (Target("big", "large"), Target("small", "m"))
    reject = policy.evaluate(inp(headers={"x-d": "1"}))
    assert reject.reject == (403, "no") and reject.targets == ()
    batch = policy.evaluate(inp(headers={"x-c": "v1"}))
    assert batch.priority == -1 and ("x-llm-priority", "batch") in batch.headers
    retried = dict(
        policy.evaluate(PolicyInput("/v1/embeddings", "POST", {}, "m", False, "embedding")).headers
    )
    assert (
        retried["x-envoy-max-retries"] == "3" and retried["x-envoy-upstream-rq-per-try-timeout-ms"] == "2000"
    )
    assert (
        dict(policy.evaluate(inp(headers={"x-b": "ab"})).headers)["x-envoy-upstream-rq-timeout-ms"] == "7000"
    )


def test_shipped_timeout_and_retry_defaults(tmp_path: Path) -> None:
    policy = write(tmp_path, "default: {}\n")
    stream = dict(policy.evaluate(inp(stream=True)).headers)
    assert stream["x-envoy-upstream-rq-timeout-ms"] == "300000" and stream["x-envoy-max-retries"] == "0"
    assert "x-envoy-retry-on" not in stream
    unary = dict(policy.evaluate(inp()).headers)
    assert unary["x-envoy-upstream-rq-timeout-ms"] == "120000"
    assert unary["x-envoy-max-retries"] == "2"
    assert unary["x-envoy-upstream-rq-per-try-timeout-ms"] == "60000"
    assert unary["x-envoy-retry-on"] == "gateway-error,connect-failure,retriable-4xx"


def test_tiers_come_from_the_tenant_plan_and_complexity_upgrade(tmp_path: Path) -> None:
    policy = write(tmp_path, POLICY)
    assert policy.evaluate(inp(headers={"x-tenant-id": "silver"}, complexity=0.5)).tier == "standard"
    assert policy.evaluate(inp(headers={"x-tenant-id": "silver"}, complexity=0.8)).tier == "premium"
    assert policy.evaluate(inp(headers={"x-tenant-id": "nobody"}, complexity=0.8)).tier == "standard"
    assert policy.evaluate(inp(headers={"x-tenant-id": "gold"})).tier == "premium"
    claims = write(tmp_path, "tenants: {claim: org, plans: {gold: {tier: premium}}}\ndefault: {}\n")
    jwt = {"envoy.filters.http.jwt_authn": {"my_provider": {"org": "gold", "sub": "u1"}}}
    assert claims.evaluate(inp(metadata=jwt, headers={"x-tenant-id": "other"})).tier == "premium"


def test_split_is_sticky_and_converges(tmp_path: Path) -> None:
    policy = load_policy(POLICIES / "canary.yaml")
    arms = [
        policy.evaluate(inp("llama-3-8b", headers={"x-user-id": f"u{i}"})).targets[0].pool
        for i in range(10_000)
    ]
    canary = arms.count("canary") / len(arms)
    assert 0.09 < canary < 0.11
    for i in range(50):
        same = {
            policy.evaluate(inp("llama-3-8b", headers={"x-user-id": f"u{i}"})).targets[0].pool
            for _ in range(5)
        }
        assert len(same) == 1
    random_arms = [policy.evaluate(inp("llama-3-8b")).targets[0].pool for _ in range(2_000)]
    assert 0.06 < random_arms.count("canary") / 2_000 < 0.14


def test_mirror_sets_the_cluster_header_for_its_share(tmp_path: Path) -> None:
    policy = load_policy(POLICIES / "shadow.yaml")
    decisions = [policy.evaluate(inp("llama-3-8b")) for _ in range(5_000)]
    mirrored = [d for d in decisions if d.mirror is not None]
    assert 0.08 < len(mirrored) / 5_000 < 0.12
    assert all(("x-llm-mirror-cluster", "shadow") in d.headers for d in mirrored)
    assert all(d.targets[0] == Target("prod", "llama-3-8b") for d in decisions)


def test_explain_says_why_earlier_rules_did_not_match(tmp_path: Path) -> None:
    policy = write(tmp_path, POLICY)
    explanation = policy.explain(inp(headers={"x-tenant-id": "gold"}))
    assert explanation.decision.rule == "tier"
    assert ("header-exact", "header x-a {'exact': '1'} did not hold") in explanation.skipped
    assert ("complexity", "complexity {'gt': 0.9} did not hold") in explanation.skipped


def test_unknown_model_gives_no_targets_when_pools_are_declared(tmp_path: Path) -> None:
    policy = write(tmp_path, POLICY)
    assert policy.evaluate(inp("nope")).targets == ()
    assert "gpt-4" in policy.models and "large" in policy.models


SHIPPED = [load_policy(path) for path in sorted(POLICIES.glob("*.yaml"))]


@settings(max_examples=200, deadline=None)
@given(
    model=st.text(max_size=20),
    stream=st.booleans(),
    task=st.sampled_from(["chat", "completion", "embedding"]),
    complexity=st.floats(0, 1),
    headers=st.dictionaries(
        st.sampled_from(["x-tenant-id", "x-user-id", "x-request-class"]), st.text(max_size=10)
    ),
    tokens=st.integers(0, 10**6),
)
def test_shipped_policies_never_raise(model, stream, task, complexity, headers, tokens) -> None:  # type: ignore[no-untyped-def]
    for policy in SHIPPED:
        decision = policy.evaluate(
            inp(model, stream, task, complexity=complexity, headers=headers, prompt_tokens=tokens)
        )
        assert decision.rule


TEAMS = "".join(
    f"  - {{name: t{i}, match: {{headers: {{x-team: {{exact: team-{i % 14}}}}}, stream: {str(i < 14).lower()}}}, timeout_s: {i + 1}}}\n"
    for i in range(28)
)
INDEXED: CompiledPolicy | None = None


@settings(max_examples=300, deadline=None)
@given(team=st.integers(0, 16), stream=st.booleans(), other=st.booleans())
def test_header_jump_table_decides_like_the_linear_walk(tmp_path_factory, team, stream, other) -> None:  # type: ignore[no-untyped-def]
    global INDEXED
    if INDEXED is None:
        path = tmp_path_factory.mktemp("p") / "teams.yaml"
        path.write_text(
            "rules:\n  - {name: first, match: {headers: {x-other: {present: true}}}, timeout_s: 99}\n"
            + TEAMS
            + "default: {}\n"
        )
        INDEXED = load_policy(path)
    assert any(not isinstance(step, int) for step in INDEXED._plan)
    headers = {"x-team": f"team-{team}"} | ({"x-other": "1"} if other else {})
    request = inp(stream=stream, headers=headers)
    assert INDEXED.evaluate(request).rule == INDEXED.explain(request).decision.rule


LIMITS_POLICY = """
tenants:
  header: x-tenant-id
  plans:
    acme: {tier: standard, limits: {requests_per_minute: 60, tokens_per_minute: 1000, over_limit: downgrade, downgrade_to: cheap}}
    free: {tier: batch}
  default_limits: {concurrency: 2}
pools:
  - {name: big, models: [large]}
  - {name: small, models: [m]}
models:
  cheap: {model: m, pool: small}
rules:
  - {name: cached, match: {model: [large]}, cache: {ttl_s: 60, max_entry_bytes: 1000}}
  - {name: uncached, match: {model: [nocache]}, route: {model: m}, cache: {enabled: false}}
default: {cache: {ttl_s: 5}}
"""


def test_limits_come_from_the_plan_and_cache_from_the_rule_or_default(tmp_path: Path) -> None:
    policy = write(tmp_path, LIMITS_POLICY)
    acme = policy.evaluate(inp("large", headers={"x-tenant-id": "acme"}))
    assert acme.limits is not None and acme.limits.requests_per_minute == 60
    assert acme.downgrade == Target("small", "m")
    assert acme.cache is not None and acme.cache.ttl_s == 60 and acme.cache.max_entry_bytes == 1000
    free = policy.evaluate(inp("m", headers={"x-tenant-id": "free"}))
    assert free.limits is not None and free.limits.concurrency == 2 and free.downgrade is None
    assert free.cache is not None and free.cache.ttl_s == 5  # the default's cache
    assert policy.evaluate(inp("nocache")).cache is None


def test_limits_errors_point_at_the_line(tmp_path: Path) -> None:
    bad = LIMITS_POLICY.replace("downgrade_to: cheap", "downgrade_to: nope")
    with pytest.raises(PolicyError) as raised:
        write(tmp_path, bad)
    assert "p.yaml:5" in str(raised.value) and "unknown model 'nope'" in str(raised.value)
    missing = LIMITS_POLICY.replace(", downgrade_to: cheap", "")
    with pytest.raises(PolicyError) as raised:
        write(tmp_path, missing)
    assert "downgrade needs downgrade_to" in str(raised.value)
    empty = LIMITS_POLICY.replace("default_limits: {concurrency: 2}", "default_limits: {per_model: true}")
    with pytest.raises(PolicyError) as raised:
        write(tmp_path, empty)
    assert "at least one of requests_per_minute" in str(raised.value)


def test_a_route_naming_only_a_pool_serves_the_requested_model_on_that_pool(tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        """
pools:
  - {name: fast, models: [m]}
  - {name: slow, models: [m]}
rules:
  - name: batchy
    match: {headers: {x-kind: {exact: batch}}}
    route: {pool: slow}
    priority: batch
default: {}
""",
    )
    decision = policy.evaluate(inp(headers={"x-kind": "batch"}))
    assert decision.targets == (Target("slow", "m"),) and decision.priority == -1
    assert policy.evaluate(inp()).targets == (Target("", "m"),)  # the default: any pool serving m
