"""Through a real Envoy: response cache hits, degraded answers, tenant budgets and downgrades."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.devstack.stack import LocalStack
from tests.conftest import RedisServer, started_stack
from tests.integration.test_envoy import post as envoy_post
from tests.integration.test_envoy import sim_control

pytestmark = pytest.mark.envoy

POLICY = """
tenants:
  header: x-tenant-id
  plans:
    acme: {tier: standard}
    trial: {tier: standard, limits: {tokens_per_minute: 150}}
    smallco: {tier: standard, limits: {tokens_per_minute: 150, over_limit: downgrade, downgrade_to: llama-3-8b}}
    shared: {tier: standard, limits: {requests_per_minute: 6}}
pools:
  - {name: fast, models: [llama-3-8b, llama-3-70b]}
  - {name: slow, models: [llama-3-8b]}
default:
  cache: {ttl_s: 600, serve_stale_on_failure: true, stale_ttl_s: 3600}
"""


def post(
    local: LocalStack, body: dict[str, object], tenant: str = "acme"
) -> tuple[int, dict[str, str], bytes]:
    return envoy_post(local, "/v1/chat/completions", json.dumps(body).encode(), {"x-tenant-id": tenant})


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "llama-3-8b", "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def until(predicate: object, timeout_s: float = 10.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()  # type: ignore[operator]
        if result:
            return result
        time.sleep(0.05)
    return None


def start(tmp_path: Path, *extproc_args: str) -> LocalStack:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return started_stack(policy=str(policy), extproc_args=list(extproc_args))


@pytest.fixture(scope="module")
def capacity_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = start(tmp_path_factory.mktemp("capacity"))
    yield local
    local.stop()


def test_a_repeated_request_is_answered_from_cache_without_reaching_a_gpu(capacity_stack: LocalStack) -> None:
    local = capacity_stack
    status, headers, first = post(local, chat("cache me", max_tokens=6))
    assert status == 200 and headers["x-llm-cache"] == "miss"
    before = local.sim_served()
    hit = until(
        lambda: (r := post(local, chat("cache me", max_tokens=6)))[1].get("x-llm-cache") == "hit" and r
    )
    assert hit, "the response was never stored"
    status, headers, body = hit  # type: ignore[misc]
    assert status == 200 and body == first  # byte for byte, the same completion id
    assert local.sim_served() == before  # no upstream saw it
    # Another tenant asking the same question is not given acme's answer.
    status, headers, other = post(local, chat("cache me", max_tokens=6), tenant="globex")
    assert headers["x-llm-cache"] == "miss" and json.loads(other)["id"] != json.loads(first)["id"]
    # Sampling at temperature 0.7 without a seed is not cached.
    status, headers, _ = post(local, chat("cache me", max_tokens=6, temperature=0.7))
    assert status == 200 and "x-llm-cache" not in headers


def test_a_streaming_hit_replays_to_the_openai_client(capacity_stack: LocalStack) -> None:
    replays_a_streamed_answer(capacity_stack, "stream me")


def replays_a_streamed_answer(local: LocalStack, text: str) -> None:
    """A streamed miss is stored once it reached [DONE], and replayed to the OpenAI client."""
    client = openai.OpenAI(
        base_url=local.base_url,
        api_key="unused",
        max_retries=0,
        default_headers={"x-tenant-id": "acme"},
    )
    messages = [{"role": "user", "content": text}]

    def stream() -> tuple[str, list[str]]:
        raw = client.chat.completions.with_raw_response.create(
            model="llama-3-8b", messages=messages, max_tokens=7, temperature=0, stream=True
        )
        chunks = list(raw.parse())
        return raw.headers.get("x-llm-cache", ""), [
            c.choices[0].delta.content or "" for c in chunks if c.choices
        ]

    status, first = stream()
    assert status == "miss" and "".join(first) == "".join(f"tok{i} " for i in range(7))
    replay = until(lambda: (r := stream())[0] == "hit" and r)
    assert replay, "the stream was never stored"
    assert replay[1] == first  # type: ignore[index]


def test_tenant_over_its_token_budget_gets_429_while_others_are_served(capacity_stack: LocalStack) -> None:
    local = capacity_stack
    statuses = []
    for i in range(4):  # each reserves its prompt estimate + 50 tokens of a 150-token budget
        status, headers, body = post(
            local, chat(f"trial {i}", max_tokens=50, temperature=0.5), tenant="trial"
        )
        statuses.append(status)
        if status == 429:
            error = json.loads(body)["error"]
            assert error["type"] == "rate_limit_exceeded" and "tokens per minute" in error["message"]
            assert int(headers["retry-after"]) >= 1
    assert statuses[0] == 200 and 429 in statuses
    status, _, _ = post(local, chat("acme is fine", max_tokens=50, temperature=0.5), tenant="acme")
    assert status == 200


def test_over_budget_downgrades_to_the_cheaper_model_when_the_plan_says_so(
    capacity_stack: LocalStack,
) -> None:
    models = []
    for i in range(4):
        body = chat(f"small {i}", max_tokens=50, temperature=0.5)
        body["model"] = "llama-3-70b"
        status, headers, _ = post(capacity_stack, body, tenant="smallco")
        assert status == 200
        models.append(headers["x-sim-model"])
    assert models[0] == "llama-3-70b" and "llama-3-8b" in models


def test_when_every_endpoint_is_down_a_stale_answer_beats_an_error(tmp_path: Path) -> None:
    local = start(tmp_path)
    try:
        status, _, first = post(local, chat("remember me", max_tokens=4))
        assert status == 200
        assert until(lambda: post(local, chat("remember me", max_tokens=4))[1].get("x-llm-cache") == "hit")
        for endpoint in local.fleet:
            sim_control(endpoint["address"], {"ready": False})
        degraded = until(
            lambda: (
                (r := post(local, chat("remember me", max_tokens=4)))[1].get("x-llm-cache") == "stale" and r
            )
        )
        assert degraded, "no stale answer while the fleet was down"
        assert degraded[0] == 200 and degraded[2] == first  # type: ignore[index]
        status, _, body = post(local, chat("never asked before", max_tokens=4))
        assert status == 503 and json.loads(body)["error"]["type"] == "service_unavailable"
    finally:
        local.stop()


def test_a_budget_holds_across_two_replicas_sharing_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    args = ("--limits", "redis", "--redis-url", redis_server.url, "--cache", "off")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start(tmp_path / "a", *args)
    second = start(tmp_path / "b", *args)
    try:
        statuses = [
            post((first, second)[i % 2], chat(f"shared {i}", max_tokens=1), tenant="shared")[0]
            for i in range(12)
        ]
        assert statuses.count(200) in (6, 7)  # 6 per minute, plus at most one refilled meanwhile
        assert set(statuses) == {200, 429}
    finally:
        first.stop()
        second.stop()
