"""Provider-aware decisions without Envoy: reshaping, spill-over, cool-down, the fallback hop,
the upstream observer, cost, and the policy checks with file:line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.config import ServerConfig
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot
from extproc.observability.metrics import Metrics
from extproc.observe import Observation, Usage
from extproc.policy.compile import PolicyError, load_policy
from extproc.providers.health import ProviderHealth, parse_retry_after
from extproc.providers.route import ProviderRoute
from extproc.providers.spend import SpendTracker
from extproc.request import Task, parse_body, parse_headers
from extproc.router import Router
from extproc.scheduler.scheduler import Scheduler
from extproc.server import ExternalProcessor, _StreamState
from tests.helpers import body_message, headers_message, set_headers

POLICY = """
tenants:
  header: x-tenant-id
  plans:
    acme: {tier: premium, hosted: {spillover: true, budget_usd_per_hour: 10}}
    plain: {tier: standard}
pools:
  - {name: fast, models: [llama-3-70b], prices: {llama-3-70b: {input_per_1m: 1, output_per_1m: 1}}}
  - name: openai
    kind: provider
    models: [gpt-4o]
    provider: {base_url: "https://api.example.test/v1", credential: {file: /secrets/openai/key}, cooldown_s: 2}
    prices: {gpt-4o: {input_per_1m: 2.5, output_per_1m: 10}}
models:
  gpt-4: {model: llama-3-70b, pool: fast}
rules:
  - name: premium-gpt4
    match: {tier: [premium], model: [gpt-4]}
    route: {model: gpt-4o, pool: openai}
    fallback: [llama-3-70b]
default: {}
spillover:
  ttft_objective_s: 1.0
  queue_s_per_request: 0.1
  targets: {llama-3-70b: {model: gpt-4o, pool: openai}}
"""

ADDRESSES = ["10.0.0.1:8000", "10.0.0.2:8000"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_router(tmp_path: Path, waiting: list[float] | None = None) -> tuple[Router, FleetState, Clock]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "policy.yaml")
    fleet = FleetState()
    set_fleet(fleet, waiting or [0.0, 0.0])
    clock = Clock()
    router = Router(ServerConfig(), fleet, Scheduler(), InFlight(), clock=clock, policy=lambda: policy)
    router.provider_health.clock = clock
    router.spend.clock = clock
    router.metrics = Metrics()
    return router, fleet, clock


def set_fleet(fleet: FleetState, waiting: list[float]) -> None:
    endpoints = [Endpoint(a, pool="fast", models=("llama-3-70b",)) for a in ADDRESSES]
    metrics = {
        a: EndpointMetrics(waiting=w, scraped_at=100.0) for a, w in zip(ADDRESSES, waiting, strict=True)
    }
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=0.0), synced=True)


def decide(
    router: Router, model: str, tenant: str = "acme", stream: bool = False, fallback_of: str = ""
) -> Any:
    headers = parse_headers([(":path", "/v1/chat/completions"), (":method", "POST"), ("x-tenant-id", tenant)])
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    request = parse_body(Task.CHAT, "application/json", json.dumps(body).encode(), 1 << 20)
    return router.decide(headers, request, fallback_of=fallback_of)


def test_premium_gpt4_is_reshaped_for_the_provider(tmp_path: Path) -> None:
    router, _, _ = make_router(tmp_path)
    decision = decide(router, "gpt-4", stream=True)
    assert decision.provider == "openai" and decision.endpoints == []
    headers = dict(decision.set_headers)
    assert headers["x-llm-provider"] == "openai" and headers[":path"] == "/v1/chat/completions"
    assert (
        headers["x-llm-requested-model"] == "gpt-4"
        and headers["x-llm-original-path"] == "/v1/chat/completions"
    )
    # One retry, and that is the fallback hop; the route decides on what.
    assert headers["x-envoy-max-retries"] == "1" and "x-envoy-retry-on" not in headers
    body = json.loads(decision.body)
    assert body["model"] == "gpt-4o" and body["stream_options"] == {"include_usage": True}
    assert not any("key" in v for v in headers.values())
    plain = decide(router, "gpt-4", tenant="plain")
    assert plain.provider == "" and plain.model == "llama-3-70b"


def test_spill_over_only_when_every_endpoint_is_predicted_to_miss(tmp_path: Path) -> None:
    router, fleet, _ = make_router(tmp_path, waiting=[20.0, 3.0])  # 2.0 s and 0.3 s predicted
    assert decide(router, "llama-3-70b").provider == ""
    set_fleet(fleet, [20.0, 15.0])  # 2.0 s and 1.5 s: both over 1.0 s
    spilled = decide(router, "llama-3-70b")
    assert spilled.provider == "openai" and spilled.spilled and spilled.model == "gpt-4o"
    assert decide(router, "llama-3-70b", tenant="plain").provider == ""  # the plan does not allow it
    assert router.metrics is not None
    assert router.metrics.spills.labels("openai", "gpt-4o")._value.get() == 1.0


def test_a_failed_provider_is_skipped_until_its_retry_after(tmp_path: Path) -> None:
    router, _, clock = make_router(tmp_path)
    router.provider_failed("openai", 30.0, "429")
    assert decide(router, "gpt-4").model == "llama-3-70b"
    clock.now += 29.0
    assert decide(router, "gpt-4").provider == ""
    clock.now += 1.5
    assert decide(router, "gpt-4").provider == "openai"
    router.provider_failed("openai", None)  # no retry-after: the pool's cooldown_s (2 s)
    clock.now += 1.9
    assert decide(router, "gpt-4").provider == ""
    clock.now += 0.2
    assert decide(router, "gpt-4").provider == "openai"


def test_the_hosted_budget_runs_out_and_refills(tmp_path: Path) -> None:
    router, _, clock = make_router(tmp_path)
    observation = Observation(model="gpt-4o", pool="openai", tenant="acme", usage=Usage(0, 1_000_000))
    assert router.account(observation, "acme") == pytest.approx(10.0)  # the whole hour's $10
    assert decide(router, "gpt-4").provider == ""
    clock.now += 360.0  # a tenth of an hour refills $1
    assert decide(router, "gpt-4").provider == "openai"
    assert router.metrics is not None
    assert router.metrics.cost.labels("acme", "gpt-4o", "openai")._value.get() == pytest.approx(10.0)
    router.account(
        Observation(model="llama-3-70b", pool="fast", tenant="someone", usage=Usage(10**6, 0)), "someone"
    )
    assert router.metrics.cost.labels("other", "llama-3-70b", "fast")._value.get() == pytest.approx(1.0)


def test_the_fallback_hop_routes_what_the_client_asked_for_to_the_fleet(tmp_path: Path) -> None:
    router, _, clock = make_router(tmp_path)
    processor = ExternalProcessor(ServerConfig(), router)
    state = _StreamState()
    hop_headers = headers_message(
        path="/v1/chat/completions",
        x_tenant_id="acme",
        x_llm_provider="openai",
        x_llm_requested_model="gpt-4",
        x_llm_original_path="/v1/chat/completions",
    )
    processor.on_request_headers(hop_headers.request_headers, state)
    provider_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    response = processor.on_request_body(body_message(provider_body).request_body, state)
    headers = set_headers(response)
    assert headers["x-llm-fallback-of"] == "openai" and headers["x-llm-model"] == "llama-3-70b"
    assert headers[":path"] == "/v1/chat/completions" and "x-llm-provider" not in headers
    assert json.loads(response.request_body.response.body_mutation.body)["model"] == "llama-3-70b"
    assert headers["x-gateway-destination-endpoint"].split(",")[0] in ADDRESSES
    # The attempt failed: the provider rests for its cool-down.
    assert not router.provider_health.available("openai", clock.now)


def _headers(pairs: list[tuple[str, str]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])


def test_the_upstream_observer_reads_429_and_retry_after(tmp_path: Path) -> None:
    router, _, clock = make_router(tmp_path)
    processor = ExternalProcessor(ServerConfig(), router)

    def attempt(status: str, extra: list[tuple[str, str]]) -> None:
        state = _StreamState()
        request = ep.ProcessingRequest(
            observability_mode=True,
            request_headers=ep.HttpHeaders(
                headers=_headers([("x-llm-provider", "openai"), ("x-llm-provider-attempt", "1")])
            ),
        )
        assert processor.on_observed(request, state) is False
        response = ep.ProcessingRequest(
            observability_mode=True,
            response_headers=ep.HttpHeaders(headers=_headers([(":status", status), *extra])),
        )
        assert processor.on_observed(response, state) is True

    attempt("200", [])
    attempt("503", [("x-llm-fallback-of", "openai")])  # the hop's answer is not the provider's
    assert router.provider_health.available("openai", clock.now)
    attempt("429", [("retry-after", "7")])
    assert not router.provider_health.available("openai", clock.now + 6.9)
    assert router.provider_health.available("openai", clock.now + 7.1)


def test_provider_paths_for_both_api_shapes() -> None:
    openai = ProviderRoute("o", "openai", "/openai/v1")
    assert openai.path_for("/v1/completions", "m") == "/openai/v1/completions"
    azure = ProviderRoute("a", "azure-openai", "", "2024-10-21", {"gpt-4o": "prod deploy"})
    assert azure.path_for("/v1/embeddings?x=1", "gpt-4o") == (
        "/openai/deployments/prod%20deploy/embeddings?api-version=2024-10-21"
    )


def test_health_and_spend_primitives() -> None:
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None and parse_retry_after("-1") is None
    clock = Clock()
    health = ProviderHealth(clock)
    health.failed("p", 10.0)
    health.failed("p", 1.0)  # a shorter answer later does not cut the first one short
    assert not health.available("p", clock.now + 9.0) and math.isclose(health.cooling(clock.now)["p"], 10.0)
    spend = SpendTracker(clock)
    assert spend.allows("t", 3600.0, clock.now) and spend.allows("t", None, clock.now)
    spend.charge("t", 3600.0, 3601.0)
    assert not spend.allows("t", 3600.0, clock.now)
    assert spend.allows("t", 3600.0, clock.now + 1.5)  # $1/s refill


@pytest.mark.parametrize(
    ("change", "replacement", "message"),
    [
        (
            'base_url: "https://api.example.test/v1"',
            'base_url: "http://api.example.test/v1"',
            "must be https",
        ),
        ("cooldown_s: 2}", "cooldown_s: 2, api: azure-openai}", "needs api_version"),
        ("prices: {gpt-4o: {input_per_1m: 2.5, output_per_1m: 10}}", "prices: {}", "must price every model"),
        ("{model: gpt-4o, pool: openai}}", "{pool: fast}}", "goes to a provider pool"),
        (
            "credential: {file: /secrets/openai/key}",
            "credential: {file: /k, env: KEY}",
            "exactly one of file, env",
        ),
        ("models: [gpt-4o]", "models: [gpt-4o]\n    endpoint_pool: x", "no discovered endpoints"),
    ],
)
def test_bad_provider_policies_name_file_and_line(
    tmp_path: Path, change: str, replacement: str, message: str
) -> None:
    assert change in POLICY
    text = POLICY.replace(change, replacement)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    (issue,) = raised.value.issues
    assert message in issue.message and issue.file == str(path)
    # The line is the changed field's, or the line of the provider pool it belongs to.
    changed = next(n for n, line in enumerate(text.splitlines(), 1) if replacement.split("\n")[0] in line)
    pool_start = next(n for n, line in enumerate(text.splitlines(), 1) if "name: openai" in line)
    assert issue.line in (changed, pool_start), (issue, changed, pool_start)


def test_tenant_limits_in_dollars_reject_or_downgrade_until_refilled(tmp_path: Path) -> None:
    from extproc.errors import ErrorKind, RoutingError

    text = POLICY.replace(
        "    plain: {tier: standard}",
        "    plain: {tier: standard, limits: {usd_per_hour: 3.6}}\n"
        "    cheap: {tier: standard, limits: {usd_per_hour: 3.6, over_limit: downgrade, downgrade_to: gpt-4o}}",
    )
    router, _, clock = make_router(tmp_path)
    (tmp_path / "limits.yaml").write_text(text)
    policy = load_policy(tmp_path / "limits.yaml")
    router.policy = lambda: policy
    for tenant in ("plain", "cheap"):
        assert decide(router, "llama-3-70b", tenant=tenant).model == "llama-3-70b"
        # $1 per 1M tokens: 4.6M tokens is $4.6, over an hour's $3.6.
        router.account(Observation(model="llama-3-70b", pool="fast", usage=Usage(4_600_000, 0)), tenant)
    with pytest.raises(RoutingError) as raised:
        decide(router, "llama-3-70b", tenant="plain")
    assert raised.value.kind is ErrorKind.RATE_LIMITED
    assert raised.value.retry_after_s == pytest.approx(1000.0, rel=0.01)  # $1 at $0.001/s
    assert decide(router, "llama-3-70b", tenant="cheap").provider == "openai"  # downgraded
    clock.now += 1001.0
    assert decide(router, "llama-3-70b", tenant="plain").model == "llama-3-70b"
