"""Hosted providers through a real Envoy on loopback: the provider doubles speak TLS with a CA
generated for this test, check the key Envoy injects, and answer 429 when told to."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from extproc.devstack.provider_sim import CLIENT_TOKEN_PREFIX
from extproc.devstack.stack import LocalStack
from tests.conftest import started_stack
from tests.integration.test_envoy import post as envoy_post

pytestmark = pytest.mark.envoy

OPENAI_KEY = "sk-openai-test-1"
AZURE_KEY = "azure-test-key-1"
CLIENT_TOKEN = f"Bearer {CLIENT_TOKEN_PREFIX}token-of-a-user"

POLICY = """
tenants:
  header: x-tenant-id
  plans:
    acme: {{tier: premium, hosted: {{spillover: true, budget_usd_per_hour: 100}}}}
    thrifty: {{tier: premium, hosted: {{budget_usd_per_hour: 0.0000001}}}}
    small: {{tier: standard}}
pools:
  - {{name: fast, models: [llama-3-8b, llama-3-70b], prices: {{llama-3-70b: {{input_per_1m: 0.1, output_per_1m: 0.2}}}}}}
  - {{name: slow, models: [llama-3-8b]}}
  - name: openai
    kind: provider
    models: [gpt-4o]
    provider:
      base_url: https://api.provider.test/v1
      credential: {{file: {dir}/openai/api-key}}
      ca_file: {dir}/openai-ca.pem
      http2: false
      cooldown_s: 1
    prices: {{gpt-4o: {{input_per_1m: 2.5, output_per_1m: 10}}}}
  - name: azure
    kind: provider
    models: [gpt-4o-azure]
    provider:
      base_url: https://azure.provider.test
      api: azure-openai
      api_version: "2024-10-21"
      model_names: {{gpt-4o-azure: gpt4o-deployment}}
      credential: {{file: {dir}/azure/api-key}}
      ca_file: {dir}/azure-ca.pem
      http2: false
      cooldown_s: 1
    prices: {{gpt-4o-azure: {{input_per_1m: 2.5, output_per_1m: 10}}}}
models:
  gpt-4: {{model: llama-3-70b, pool: fast}}
rules:
  - name: premium-gpt4-to-the-provider
    match: {{tier: [premium], model: [gpt-4]}}
    route: {{model: gpt-4o, pool: openai}}
    fallback: [llama-3-70b]
  - name: azure-falls-back-to-self-hosted
    match: {{model: [gpt-4o-azure]}}
    fallback: [llama-3-70b]
    retries: {{count: 1, per_try_timeout_s: 1.0}}
default: {{}}
"""


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from provider_stack(tmp_path_factory.mktemp("providers"))


def provider_stack(work: Path, **overrides: Any) -> Iterator[LocalStack]:
    """The stack with the provider doubles (also on the Wasm data path: tests/wasm/test_providers.py)."""
    for name, key in (("openai", OPENAI_KEY), ("azure", AZURE_KEY)):
        (work / name).mkdir()
        (work / name / "api-key").write_text(key)
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(dir=work))
    # Every decision logged, prompts included: the keys must still be nowhere in it.
    log = ["--decision-log", str(work / "decisions.jsonl"), "--decision-log-sample-rate", "1"]
    stack = started_stack(
        policy=str(policy), sim_endpoints=2, extproc_args=[*log, "--decision-log-include-prompt"], **overrides
    )
    yield stack
    stack.stop()


def _tls(local: LocalStack, provider: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=local.provider_sims[provider]["ca_file"])


def provider_call(local: LocalStack, provider: str, path: str, body: dict[str, Any] | None = None) -> Any:
    sim = local.provider_sims[provider]
    request = urllib.request.Request(
        f"https://127.0.0.1:{sim['port']}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10, context=_tls(local, provider)) as reply:
        return json.loads(reply.read())


def stats(local: LocalStack, provider: str) -> dict[str, Any]:
    result: dict[str, Any] = provider_call(local, provider, "/sim/stats")
    return result


def post(
    local: LocalStack, body: dict[str, Any], tenant: str = "acme", credential: tuple[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-tenant-id": tenant}
    if credential is not None:
        headers[credential[0]] = credential[1]
    return envoy_post(local, "/v1/chat/completions", json.dumps(body).encode(), headers)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


def fleet_credential_hashes(local: LocalStack) -> set[str]:
    seen: set[str] = set()
    for endpoint in local.fleet:
        with urllib.request.urlopen(f"http://{endpoint['address']}/sim/stats", timeout=5) as reply:
            seen.update(json.loads(reply.read())["credential_hashes"])
    return seen


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def metrics_text(local: LocalStack) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{local.config.metrics_port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def served_by_provider(headers: dict[str, str]) -> bool:
    return "x-provider-sim" in headers


def test_premium_gpt4_goes_to_the_provider_with_its_key_and_without_the_clients(local: LocalStack) -> None:
    before = stats(local, "openai")
    status, headers, body = post(local, chat("gpt-4"), credential=("authorization", CLIENT_TOKEN))
    assert status == 200, body
    assert served_by_provider(headers)
    after = stats(local, "openai")
    assert after["served"] == before["served"] + 1
    assert after["models"].get("gpt-4o", 0) == before["models"].get("gpt-4o", 0) + 1
    # The double answers 401 to anything but the injected key, and counts any client token.
    assert after["unauthorized"] == before["unauthorized"]
    assert after["credential_leaks"] == 0
    # Everyone else's gpt-4 is the local 70B.
    status, headers, body = post(local, chat("gpt-4"), tenant="small")
    assert status == 200 and not served_by_provider(headers)
    assert json.loads(body)["model"] == "llama-3-70b"


def test_azure_shape_deployment_path_api_version_and_api_key(local: LocalStack) -> None:
    status, headers, body = post(
        local, chat("gpt-4o-azure"), credential=("api-key", f"{CLIENT_TOKEN_PREFIX}k")
    )
    assert status == 200, body
    assert served_by_provider(headers)
    azure = stats(local, "azure")
    assert azure["paths"] == {"/openai/deployments/gpt4o-deployment/chat/completions": azure["served"]}
    assert azure["credential_leaks"] == 0 and azure["unauthorized"] == 0


def test_openai_sdk_streams_from_the_provider_and_its_cost_is_counted(local: LocalStack) -> None:
    client = openai.OpenAI(base_url=local.base_url, api_key=f"{CLIENT_TOKEN_PREFIX}sdk", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        extra_headers={"x-tenant-id": "acme"},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("ok ")
    assert stats(local, "openai")["credential_leaks"] == 0

    def cost() -> float:
        for line in metrics_text(local).splitlines():
            if (
                line.startswith("llm_extproc_cost_usd_total{")
                and 'pool="openai"' in line
                and 'tenant="acme"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    deadline = time.monotonic() + 10
    while cost() == 0.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cost() > 0.0


def test_a_tenant_over_its_hosted_budget_stays_self_hosted(local: LocalStack) -> None:
    status, headers, _ = post(local, chat("gpt-4"), tenant="thrifty")
    assert status == 200 and served_by_provider(headers)  # the first answer spends the budget
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, headers, body = post(local, chat("gpt-4"), tenant="thrifty")
        assert status == 200
        if not served_by_provider(headers):
            assert json.loads(body)["model"] == "llama-3-70b"
            return
        time.sleep(0.1)
    raise AssertionError("a tenant over its hosted budget kept going to the provider")


def cost(local: LocalStack, pool: str, tenant: str = "acme") -> float:
    for line in metrics_text(local).splitlines():
        if (
            line.startswith("llm_extproc_cost_usd_total{")
            and f'pool="{pool}"' in line
            and f'tenant="{tenant}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def settled_costs(local: LocalStack) -> tuple[float, float]:
    """The provider's and the fleet's spend once earlier answers' usage is counted: ext_proc's
    observer reports as a response ends, the Wasm filter in batches (about every second)."""
    costs = cost(local, "openai"), cost(local, "fast")
    for _ in range(20):
        time.sleep(1.2)
        now = cost(local, "openai"), cost(local, "fast")
        if now == costs:
            break
        costs = now
    return costs


def test_rate_limited_provider_falls_back_honours_retry_after_and_resumes(local: LocalStack) -> None:
    provider_cost, fleet_cost = settled_costs(local)
    provider_call(local, "openai", "/sim/control", {"rate_limit_for_s": 2.0, "retry_after_s": 2})
    before = stats(local, "openai")
    answers = [post(local, chat("gpt-4"), credential=("authorization", CLIENT_TOKEN)) for _ in range(6)]
    # Served by the fleet: charged at the fleet's price, the provider's spend unchanged.
    deadline = time.monotonic() + 10
    while cost(local, "fast") == fleet_cost and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cost(local, "openai") == provider_cost and cost(local, "fast") > fleet_cost
    assert [status for status, _, _ in answers] == [200] * 6
    assert not any(served_by_provider(h) for _, h, _ in answers)
    # The first one went through the fallback hop; the rest never tried the provider again.
    assert answers[0][1].get("x-llm-fallback-of") == "openai"
    assert stats(local, "openai")["rate_limited"] == before["rate_limited"] + 1
    time.sleep(2.2)
    status, headers, _ = post(local, chat("gpt-4"))
    assert status == 200 and served_by_provider(headers)
    # The key the provider cluster added rode along with the retry: the hop dropped it.
    seen = fleet_credential_hashes(local)
    assert sha(f"Bearer {OPENAI_KEY}") not in seen and sha(OPENAI_KEY) not in seen


def test_failing_provider_5xx_falls_back_for_streams_before_the_first_byte(local: LocalStack) -> None:
    provider_call(local, "azure", "/sim/control", {"fail_status": 503})
    try:
        status, headers, body = post(local, chat("gpt-4o-azure", stream=True))
        assert status == 200
        assert headers.get("x-llm-fallback-of") == "azure"
        assert b"data: [DONE]" in body
    finally:
        provider_call(local, "azure", "/sim/control", {"fail_status": 0})
    assert sha(AZURE_KEY) not in fleet_credential_hashes(local)


def test_keys_never_reach_responses_metrics_or_logs(local: LocalStack) -> None:
    status, headers, body = post(local, chat("gpt-4"), credential=("authorization", CLIENT_TOKEN))
    assert status == 200
    decisions_file = Path(str(local.config.policy)).parent / "decisions.jsonl"
    deadline = time.monotonic() + 10
    while '"pool":"openai"' not in decisions_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    decisions = decisions_file.read_text()
    assert '"pool":"openai"' in decisions  # provider decisions are logged...
    for key in (OPENAI_KEY, AZURE_KEY):
        assert key not in json.dumps(headers) and key.encode() not in body
        assert key not in metrics_text(local)
        assert key not in local.logs()
        assert key not in decisions  # ...without any key
    assert stats(local, "openai")["credential_leaks"] == 0
    assert stats(local, "azure")["credential_leaks"] == 0


def test_a_rotated_key_file_is_picked_up_without_a_restart(local: LocalStack, tmp_path: Path) -> None:
    upstream = next(u for u in local.providers if u.name == "openai")
    key_file = Path(upstream.key_file)
    staged = key_file.with_name(".api-key.new")
    staged.write_text("sk-openai-rotated-2")
    staged.replace(key_file)  # what a Secret update looks like: an atomic swap; the double now wants it
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            before = stats(local, "openai")["unauthorized"]
            status, headers, _ = post(local, chat("gpt-4"))
            if (
                status == 200
                and served_by_provider(headers)
                and stats(local, "openai")["unauthorized"] == before
            ):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("Envoy kept sending the old key")
    finally:
        staged.write_text(OPENAI_KEY)
        staged.replace(key_file)


def test_a_stream_cut_after_its_first_bytes_is_never_retried(local: LocalStack) -> None:
    served_before = local.sim_served()
    provider_call(local, "openai", "/sim/control", {"cut_after_chunks": 2})
    try:
        status, headers, body = post_stream(local, chat("gpt-4", stream=True))
    finally:
        provider_call(local, "openai", "/sim/control", {"cut_after_chunks": 0})
    assert status == 200 and served_by_provider(headers)
    assert body.count(b"data: ") == 2 and b"[DONE]" not in body  # the client got what there was
    assert stats(local, "openai")["cut_streams"] == 1
    assert local.sim_served() == served_before  # and no fallback answered it a second time


def post_stream(local: LocalStack, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """Reads a stream until the connection ends, however it ends."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", local.listen_port, timeout=30)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"content-type": "application/json", "x-tenant-id": "acme"},
    )
    reply = connection.getresponse()
    chunks = []
    try:
        while piece := reply.read1(65536):
            chunks.append(piece)
    except (http.client.IncompleteRead, ConnectionError):
        pass
    finally:
        connection.close()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, b"".join(chunks)


def test_a_provider_resetting_connections_falls_back(local: LocalStack) -> None:
    time.sleep(1.2)  # past the cool-down of any earlier failure: the provider is tried
    failed_before = stats(local, "azure")["failed"]
    provider_call(local, "azure", "/sim/control", {"reset": True})
    try:
        status, headers, body = post(local, chat("gpt-4o-azure"))
    finally:
        provider_call(local, "azure", "/sim/control", {"reset": False})
    assert status == 200, body
    assert headers.get("x-llm-fallback-of") == "azure"
    assert stats(local, "azure")["failed"] == failed_before + 1


def test_a_provider_too_slow_for_the_per_try_timeout_falls_back(local: LocalStack) -> None:
    time.sleep(1.2)  # past the cool-down of any earlier failure: the provider is tried
    provider_call(local, "azure", "/sim/control", {"ttft_s": 3.0})
    try:
        status, headers, body = post(local, chat("gpt-4o-azure"))
    finally:
        provider_call(local, "azure", "/sim/control", {"ttft_s": 0.05})
    assert status == 200, body
    # The rule's 1 s per-try timeout ended the provider's attempt; the hop's fleet answered.
    assert headers.get("x-llm-fallback-of") == "azure" and not served_by_provider(headers)
