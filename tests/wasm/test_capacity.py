"""The Wasm data path's answers to what ext_proc's observer stream feeds, through a real Envoy,
the real brain and the simulated fleet: per-request metrics and decision-log lines for requests
the filter decided, spend limits, concurrency limits and the response cache."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.devstack.stack import LocalStack
from tests.conftest import envoy_stats, started_stack
from tests.integration.test_capacity import chat, post, replays_a_streamed_answer, until
from tests.integration.test_envoy import sim_control
from tests.wasm.test_stack import healthz, post_chat

pytestmark = pytest.mark.envoy

# The table decides every request but the limited tenants' (their plans escalate).
TABLE_POLICY = """
tenants:
  header: x-tenant-id
  plans:
    acme: {tier: standard}
    spender: {tier: standard, limits: {usd_per_hour: 0.000001}}
    solo: {tier: standard, limits: {concurrency: 1}}
pools:
  - {name: fast, models: [llama-3-8b, llama-3-70b], prices: {llama-3-8b: {input_per_1m: 100, output_per_1m: 100}}}
  - {name: slow, models: [llama-3-8b], prices: {llama-3-8b: {input_per_1m: 100, output_per_1m: 100}}}
default: {}
"""

CACHE_POLICY = """
tenants:
  header: x-tenant-id
  plans:
    acme: {tier: standard}
pools:
  - {name: fast, models: [llama-3-8b, llama-3-70b]}
  - {name: slow, models: [llama-3-8b]}
default:
  cache: {ttl_s: 600}
"""


def wasm_stack(work: Path, policy: str, *extproc_args: str) -> LocalStack:
    path = work / "policy.yaml"
    path.write_text(policy)
    local = started_stack(data_path="wasm", policy=str(path), extproc_args=list(extproc_args))
    until(lambda: healthz(local)["wasm"]["snapshot_version"] is not None)
    return local


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path]]:
    work = tmp_path_factory.mktemp("wasm-table")
    log = work / "decisions.jsonl"
    local = wasm_stack(work, TABLE_POLICY, "--decision-log", str(log), "--decision-log-sample-rate", "1")
    yield local, log
    local.stop()


def metrics(local: LocalStack) -> str:
    url = f"http://127.0.0.1:{local.config.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """One series' value (0 when absent), matched on the labels given."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def logged(log: Path, request_id: str) -> dict[str, Any] | None:
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        entry: dict[str, Any] = json.loads(line)
        if entry["request_id"] == request_id:
            return entry
    return None


def post_id(local: LocalStack, body: dict[str, object], tenant: str, request_id: str) -> int:
    return post_chat(local, json.dumps(body).encode(), {"x-tenant-id": tenant, "x-request-id": request_id})


def test_a_filter_decided_request_gets_its_log_line_histograms_and_cost(
    table: tuple[LocalStack, Path],
) -> None:
    local, log = table
    before_stats, before = envoy_stats(local), metrics(local)
    assert post_id(local, chat("log me", max_tokens=5), "acme", "wasm-log-1") == 200
    assert envoy_stats(local)["escalated"] == before_stats["escalated"]  # the filter decided it
    line = until(lambda: logged(log, "wasm-log-1"))
    assert isinstance(line, dict), "no decision-log line for a filter-decided request"
    assert (line["task"], line["model_requested"], line["model_served"], line["status"]) == (
        "chat",
        "llama-3-8b",
        "llama-3-8b",
        200,
    )
    assert line["outcome"] == "routed" and line["served_by"] in {e["address"] for e in local.fleet}
    assert line["pool"] in {"fast", "slow"} and line["completion_tokens"] == 5 and line["prompt_tokens"] > 0
    assert line["streamed"] is False and line["duration_ms"] > 0
    # The filter's pick: a total per listed endpoint, best first (the ext_proc path logs its own).
    scores = line["scores"]
    assert len(scores) == len(line["endpoints"]) > 0 and scores == sorted(scores, reverse=True), line
    after = metrics(local)
    for name, labels in (
        (
            "gen_ai_client_token_usage_count",
            {"gen_ai_token_type": "output", "gen_ai_response_model": "llama-3-8b"},
        ),
        ("gen_ai_server_request_duration_seconds_count", {"gen_ai_response_model": "llama-3-8b"}),
        ("llm_extproc_cost_usd_total", {"tenant": "acme", "model": "llama-3-8b"}),
    ):
        assert sample(after, name, **labels) > sample(before, name, **labels), name


def test_a_filter_refused_request_is_logged_as_rejected(table: tuple[LocalStack, Path]) -> None:
    local, log = table
    assert post_id(local, {**chat("x"), "model": "no-such-model"}, "acme", "wasm-log-404") == 404
    line = until(lambda: logged(log, "wasm-log-404"))
    assert isinstance(line, dict)
    assert (line["status"], line["outcome"]) == (404, "rejected") and "does not exist" in line["error"]


def test_a_tenant_over_its_spend_limit_is_refused_once_its_usage_is_reported(
    table: tuple[LocalStack, Path],
) -> None:
    local, log = table
    assert post_id(local, chat("spend", max_tokens=20), "spender", "wasm-spend-1") == 200

    def refused() -> dict[str, Any] | None:
        status, headers, body = post(local, chat("spend more", max_tokens=1), tenant="spender")
        return {"headers": headers, "error": json.loads(body)["error"]} if status == 429 else None

    answer = until(refused)
    assert isinstance(answer, dict), "the spend of the first request never reached the limit"
    assert "usd per hour" in answer["error"]["message"] and int(answer["headers"]["retry-after"]) >= 1
    assert post(local, chat("others are fine", max_tokens=1), tenant="acme")[0] == 200
    # The brain decided that request: its own decision-log line, joined with the filter's record.
    line = until(lambda: logged(log, "wasm-spend-1"))
    assert isinstance(line, dict)
    assert (line["tenant"], line["status"], line["completion_tokens"]) == ("spender", 200, 20)
    assert line["served_by"] in {e["address"] for e in local.fleet} and line["rule"]


def test_concurrency_limit_holds_while_a_request_is_in_flight_and_frees_when_it_ends(
    table: tuple[LocalStack, Path],
) -> None:
    local, _ = table
    for endpoint in local.fleet:
        sim_control(endpoint["address"], {"hang": True})
    held: dict[str, object] = {}

    def hold() -> None:
        try:
            post_timeout(local, "solo", timeout_s=4.0)
        except OSError as error:  # the client gives up: Envoy resets the request
            held["ended"] = repr(error)

    first = threading.Thread(target=hold)
    try:
        first.start()
        until(lambda: healthz(local)["wasm"]["leases_held"] >= 1)
        status, body = post_timeout(local, "solo", timeout_s=3.0)
        assert status == 429 and "concurrency" in json.loads(body)["error"]["message"]
    finally:
        for endpoint in local.fleet:
            sim_control(endpoint["address"], {"hang": False})
        first.join(10)
    assert "ended" in held
    # The first request's record ends its lease: the tenant may send again.
    assert until(lambda: post_timeout(local, "solo", timeout_s=10.0)[0] == 200)
    # ... and that request's own lease ends with its record (sent as the response ends).
    assert until(lambda: healthz(local)["wasm"]["leases_held"] == 0)


def post_timeout(local: LocalStack, tenant: str, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{local.listen_port}/v1/chat/completions",
        data=json.dumps(chat("hold", max_tokens=2)).encode(),
        headers={"content-type": "application/json", "x-tenant-id": tenant},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), error.read()


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = wasm_stack(tmp_path_factory.mktemp("wasm-cache"), CACHE_POLICY)
    yield local
    local.stop()


def test_an_escalated_miss_fills_the_cache_and_the_next_request_is_a_hit(cached: LocalStack) -> None:
    status, headers, first = post(cached, chat("cache me on wasm", max_tokens=6))
    assert status == 200 and headers.get("x-llm-cache") == "miss"
    before = cached.sim_served()
    hit = until(
        lambda: (
            (r := post(cached, chat("cache me on wasm", max_tokens=6)))[1].get("x-llm-cache") == "hit" and r
        )
    )
    assert hit, "the response was never stored"
    status, _, body = hit  # type: ignore[misc]
    assert status == 200 and body == first
    assert cached.sim_served() == before
    assert healthz(cached)["wasm"]["cache_fills"] >= 1


def test_a_streamed_miss_fills_the_cache_too(cached: LocalStack) -> None:
    replays_a_streamed_answer(cached, "stream me on wasm")
