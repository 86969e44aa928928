"""Policies through a real Envoy + ext_proc + simulator."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from extproc.deploy import LOCAL_STACK_POLICY
from extproc.devstack.stack import LocalStack
from tests.conftest import stack_config
from tests.integration.test_envoy import chat_body, post

pytestmark = pytest.mark.envoy
POLICIES = Path(__file__).parents[2] / "policies"


def stats(address: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://{address}/sim/stats", timeout=5) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def test_local_stack_policy_premium_rewrite_and_timeouts() -> None:
    local = LocalStack(stack_config(policy=str(LOCAL_STACK_POLICY)))
    local.start()
    try:
        fast = {e["address"] for e in local.fleet if e["pool"] == "fast"}
        # A premium tenant asking for the small model is routed to the large one, body rewritten.
        status, headers, body = post(
            local,
            "/v1/chat/completions",
            chat_body(max_tokens=2),
            {"x-tenant-id": "acme", "x-llm-tier": "batch"},
        )
        assert status == 200
        assert headers["x-gateway-destination-endpoint-served"] in fast
        assert json.loads(body)["model"] == "llama-3-70b"
        assert headers["x-sim-model"] == "llama-3-70b"
        assert headers["x-sim-llm-tier"] == "premium"  # the client's x-llm-tier never counts
        # Aliases are models clients can list and use.
        status, headers, body = post(
            local, "/v1/chat/completions", chat_body(max_tokens=1).replace(b"llama-3-8b", b"gpt-4")
        )
        assert status == 200 and json.loads(body)["model"] == "llama-3-70b"
        # Non-streaming: 2 retries, 60 s per try (Envoy enforces the per-try timeout upstream).
        status, headers, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1))
        assert headers["x-sim-expected-timeout-ms"] == "60000"
        # Streaming: 300 s and no retries.
        status, headers, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1, stream=True))
        assert status == 200 and headers["x-sim-expected-timeout-ms"] == "300000"
        # What SREs see: decisions by pool/model/tier, pool aggregates, the active policy.
        base = f"http://127.0.0.1:{local.config.metrics_port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as reply:
            page = reply.read().decode()
        assert (
            'llm_extproc_requests_total{model="llama-3-70b",outcome="routed",pool="fast",task="chat",tier="premium"}'
            in page
        )
        assert 'inference_pool_queue_length{pool="slow"}' in page
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
            health = json.loads(reply.read())
        assert health["synced"] and health["policy_version"] and health["policy_last_error"] is None
    finally:
        local.stop()


# On the Wasm path a mirrored request takes its own route once the filter has written the
# decision (a mirror policy on the shared route cost every request): both paths.
@pytest.mark.parametrize("data_path", ["extproc", "wasm"])
def test_canary_split_converges_and_mirror_reaches_the_shadow_pool(tmp_path: Path, data_path: str) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "endpoints:\n"
        "- {pool: stable, models: [llama-3-8b]}\n"
        "- {pool: stable, models: [llama-3-8b]}\n"
        "- {pool: canary, models: [llama-3-8b-v2]}\n"
        "- {pool: shadow, models: [llama-3-8b]}\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "pools:\n"
        "  - {name: stable, models: [llama-3-8b]}\n"
        "  - {name: canary, models: [llama-3-8b-v2]}\n"
        "  - {name: shadow, models: [llama-3-8b], envoy_cluster: shadow}\n"
        "rules:\n"
        "  - name: mirrored\n"
        "    match: {headers: {x-mirror-me: {present: true}}}\n"
        "    route: {model: llama-3-8b, pool: stable}\n"
        "    mirror: {pool: shadow, percent: 100}\n"
        "  - name: canary\n"
        "    match: {model: [llama-3-8b]}\n"
        "    split:\n"
        "      key: x-user-id\n"
        "      targets: [{model: llama-3-8b, pool: stable, weight: 90}, {model: llama-3-8b-v2, pool: canary, weight: 10}]\n"
        "default: {}\n"
    )
    local = LocalStack(stack_config(policy=str(policy), sim_fleet_file=str(fleet), data_path=data_path))
    local.start()
    try:
        by_pool = {e["address"]: e["pool"] for e in local.fleet}
        shadow = next(a for a, p in by_pool.items() if p == "shadow")
        pools = []
        for i in range(300):
            status, headers, body = post(
                local, "/v1/chat/completions", chat_body(max_tokens=1), {"x-user-id": f"user-{i}"}
            )
            assert status == 200
            pools.append(by_pool[headers["x-gateway-destination-endpoint-served"]])
        share = pools.count("canary") / len(pools)
        assert 0.05 < share < 0.16, share
        assert "shadow" not in pools
        # The same user always lands on the same arm.
        again = {
            by_pool[
                post(local, "/v1/chat/completions", chat_body(max_tokens=1), {"x-user-id": "user-7"})[1][
                    "x-gateway-destination-endpoint-served"
                ]
            ]
            for _ in range(5)
        }
        assert len(again) == 1
        # Only the mirror rule's requests are mirrored.
        before = stats(shadow)["served"]
        assert before == 0
        for _ in range(5):
            status, headers, body = post(
                local, "/v1/chat/completions", chat_body(max_tokens=1), {"x-mirror-me": "1"}
            )
            assert status == 200
            assert by_pool[headers["x-gateway-destination-endpoint-served"]] == "stable"
            assert json.loads(body)["model"] == "llama-3-8b"
        deadline = time.monotonic() + 10
        while stats(shadow)["served"] - before < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats(shadow)["served"] - before == 5
    finally:
        local.stop()


def test_batch_is_shed_with_429_before_standard_when_saturated(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "endpoints:\n- {pool: fast, models: [llama-3-8b], max_num_seqs: 1, kv_capacity_tokens: 200}\n"
    )
    local = LocalStack(
        stack_config(policy=str(LOCAL_STACK_POLICY), sim_fleet_file=str(fleet), time_scale=0.2)
    )
    local.start()
    try:
        body = chat_body("fill the cache " * 5, max_tokens=180)
        results: list[int] = []
        fillers = [
            threading.Thread(target=lambda: results.append(post(local, "/v1/chat/completions", body)[0]))
            for _ in range(12)
        ]
        for thread in fillers:
            thread.start()
        # Wait until the endpoint reports a deep queue, so the probe below does not queue itself.
        address = local.fleet[0]["address"]
        deadline = time.monotonic() + 20
        while stats(address)["waiting"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # three scrape intervals: ext_proc's snapshot now shows the full KV cache too
        shed = None
        while time.monotonic() < deadline:
            status, headers, payload = post(
                local, "/v1/chat/completions", chat_body(max_tokens=1), {"x-tenant-id": "nightly-jobs"}
            )
            if status == 429:
                shed = (headers, json.loads(payload))
                break
            time.sleep(0.05)
        assert shed is not None, "batch was never shed"
        assert shed[0]["retry-after"] == "2" and shed[1]["error"]["code"] == "overloaded"
        # Standard traffic is still accepted at the same moment.
        status, _, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1))
        assert status == 200
        for thread in fillers:
            thread.join(60)
        assert results == [200] * 12
    finally:
        local.stop()


def test_invalid_policy_during_load_keeps_the_last_good_one_and_no_request_fails(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    good_a = "rules:\n  - {name: a, match: {stream: false}, timeout_s: 11}\ndefault: {}\n"
    good_b = "rules:\n  - {name: b, match: {stream: false}, timeout_s: 22}\ndefault: {}\n"
    policy.write_text(good_a)
    local = LocalStack(stack_config(policy=str(tmp_path), extproc_args=["--policy-reload-interval", "0.1"]))
    local.start()
    try:
        timeouts = []

        def send(n: int) -> None:
            for _ in range(n):
                status, headers, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1))
                assert status == 200
                timeouts.append(headers["x-sim-expected-timeout-ms"])

        send(5)
        policy.write_text("rules:\n  - {name: a, match: {stream: maybe}}\ndefault: {}\n")
        time.sleep(0.5)  # several reload checks see the bad file
        send(20)
        assert set(timeouts) == {"11000"}  # the last good policy stayed
        policy.write_text(good_b)
        deadline = time.monotonic() + 10
        while timeouts[-1] != "22000" and time.monotonic() < deadline:
            send(1)
        assert timeouts[-1] == "22000"
    finally:
        local.stop()
