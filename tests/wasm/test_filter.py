"""The Wasm filter through a real Envoy: body reading, the pick, headers, errors, staleness.

The brain here is a stand-in serving a snapshot the test writes (tests/wasm/harness.py), so
each test controls exactly what the filter knows; tests/wasm/test_stack.py runs the real one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.errors import ErrorKind, RoutingError
from tests.helpers import wait_until
from tests.wasm.harness import StaticBrain, WasmEnvoy, snapshot_for, started

pytestmark = pytest.mark.envoy

CHAT = "/v1/chat/completions"


# Both ways the decision reaches the request: written into held headers (the local config), or
# as filter state copied by Envoy's buffer + header_mutation filters (Istio's WasmPlugin).
@pytest.fixture(scope="module", params=[True, False], ids=["held-headers", "passing-headers"])
def wasm(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[WasmEnvoy, StaticBrain]]:
    yield from started(tmp_path_factory.mktemp("wasm"), endpoints=4, poll_ms=20, hold_headers=request.param)


@pytest.fixture
def envoy(wasm: tuple[WasmEnvoy, StaticBrain]) -> Iterator[WasmEnvoy]:
    """Envoy with the default snapshot confirmed by the filter."""
    envoy, brain = wasm
    brain.up, brain.decide = True, None
    publish(brain, snapshot_for(envoy.addresses))
    yield envoy


def publish(brain: StaticBrain, snapshot: dict[str, Any]) -> None:
    """Serve a new snapshot version and wait until the filter has polled it."""
    version = f"{snapshot['version']}-{brain.polls}"
    brain.snapshot = {**snapshot, "version": version}
    # Every VM (Envoy's main thread and its worker) polls every 20 ms: once a few polls came
    # back holding this version, the worker has it too.
    wait_until(lambda: brain.confirmed.get(version, 0) >= 6)


def chat(model: str = "m", text: str = "hello", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra}).encode()


def echoed(reply: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    status, _, body = reply
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_best_scored_endpoints_in_order_reach_envoy_and_the_first_serves(envoy: WasmEnvoy) -> None:
    # snapshot_for scores the endpoints in falling order; a user key would add affinity.
    answer = echoed(envoy.request(CHAT, chat(text="")))
    chosen = answer["headers"]["x-gateway-destination-endpoint"].split(",")
    assert chosen == envoy.addresses[:3]
    assert answer["endpoint"] == chosen[0]
    assert answer["headers"]["x-llm-model"] == "m"
    assert "x-llm-stream" not in answer["headers"]


def test_stream_flag_sets_the_stream_header(envoy: WasmEnvoy) -> None:
    answer = echoed(envoy.request(CHAT, chat(stream=True)))
    assert answer["headers"]["x-llm-stream"] == "true"


def test_escaped_keys_and_values_are_read_as_json(envoy: WasmEnvoy) -> None:
    body = b'{"messages": [{"role": "user", "content": "x"}], "\\u006dodel": "\\u006d", "model": "m"}'
    assert echoed(envoy.request(CHAT, body))["headers"]["x-llm-model"] == "m"
    # The last of duplicate keys wins, as in json.loads.
    body = b'{"model": "nope", "messages": [{"role": "user", "content": "x"}], "mod\\u0065l": "m"}'
    assert echoed(envoy.request(CHAT, body))["headers"]["x-llm-model"] == "m"


def test_session_key_sticks_to_one_endpoint_and_keys_spread(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    # Equally good endpoints: the affinity bonus alone decides. The header is named as a user
    # might configure it; Envoy's keys are lowercase.
    equal = {"m|": {"endpoints": [[a, 0] for a in envoy.addresses]}}
    publish(brain, snapshot_for(envoy.addresses, candidates=equal, session_header="X-User-Id"))
    firsts = {}
    for user in (f"user-{i}" for i in range(12)):
        seen = {echoed(envoy.request(CHAT, chat(), {"x-user-id": user}))["endpoint"] for _ in range(3)}
        assert len(seen) == 1
        firsts[user] = seen.pop()
    assert len(set(firsts.values())) >= 2


def conversation(*turns: str) -> bytes:
    """A chat with a 320-byte system prompt (five 64-byte prefix blocks) and these turns."""
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": "S" * 320}]
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return json.dumps({"model": "m", "messages": messages}).encode()


def test_a_conversation_returns_to_the_endpoint_holding_its_earlier_turns(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    first, second = envoy.addresses[:2]

    def scored(scores: list[int]) -> dict[str, Any]:
        endpoints = [[a, s] for a, s in zip(envoy.addresses, scores, strict=True)]
        return snapshot_for(envoy.addresses, candidates={"m|": {"endpoints": endpoints}})

    # Turn one (9 blocks: the text joins messages with newlines) goes to the best score.
    publish(brain, scored([3_000_000, 2_000_000, 1_000_000, 0]))
    assert echoed(envoy.request(CHAT, conversation("a" * 300)))["endpoint"] == first
    # first falls behind second; the prefix ownership outlives snapshots.
    publish(brain, scored([1_500_000, 2_500_000, 1_000_000, 0]))
    # Turn two (14 blocks) shares its first 9 with turn one: 9/14 of the prefix weight (2.0)
    # puts first ahead again (1.5 + 1.29 > 2.5): its cache holds most of the prompt.
    turn_two = conversation("a" * 300, "r" * 200, "q" * 100)
    assert echoed(envoy.request(CHAT, turn_two))["endpoint"] == first
    # Another conversation shares only the system prompt (5 of 19 blocks): 1.5 + 0.53 < 2.5,
    # the scores decide. (One key of the first bytes would give first the whole bonus here.)
    assert echoed(envoy.request(CHAT, conversation("b" * 900)))["endpoint"] == second
    # Ownership moved with that pick, system prompt included: with first the best score again,
    # that conversation's next turn still goes to second (19 of 21 blocks: 1.5 + 1.81 > 2.5).
    publish(brain, scored([2_500_000, 1_500_000, 1_000_000, 0]))
    assert echoed(envoy.request(CHAT, conversation("b" * 900, "r" * 100, "q")))["endpoint"] == second
    assert echoed(envoy.request(CHAT, conversation("c" * 900)))["endpoint"] == first


def test_own_in_flight_steers_away_until_the_response_ends(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    import threading

    from tests.wasm import harness

    _, brain = wasm
    first, second = envoy.addresses[:2]
    scores = {"m|": {"endpoints": [[first, 1_500_000], [second, 1_000_000]]}}
    publish(brain, snapshot_for(envoy.addresses, candidates=scores))
    assert echoed(envoy.request(CHAT, chat(text="")))["endpoint"] == first
    harness.slow_started.clear()
    harness.release_slow.clear()
    slow = threading.Thread(target=envoy.request, args=(CHAT, chat(text=""), {harness.SLOW_HEADER: "1"}))
    slow.start()
    try:
        assert harness.slow_started.wait(10)
        # One request in flight at the first costs it a whole point: the second is better now.
        assert echoed(envoy.request(CHAT, chat(text="")))["endpoint"] == second
    finally:
        harness.release_slow.set()
        slow.join(10)
    # The slow one ended (on_log): the first is the best again.
    assert echoed(envoy.request(CHAT, chat(text="")))["endpoint"] == first


def test_load_score_weighs_the_prompt_and_fresh_in_flight_by_each_endpoints_speed(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    import threading

    from tests.wasm import harness

    _, brain = wasm
    slow, fast = envoy.addresses[:2]
    # (address, score, per prompt token, step, per queued, waiting, running): slow prefills a
    # token in 0.04 typical TTFTs, fast in 0.001 but has one request queued (one TTFT).
    terms = {
        "m|": {
            "endpoints": [
                [slow, 0, 40_000_000, 100_000_000, 1_000_000_000, 0, 0],
                [fast, 0, 1_000_000, 100_000_000, 1_000_000_000, 1, 1],
            ]
        }
    }
    # No prefix affinity: the load score alone decides.
    loaded = snapshot_for(
        envoy.addresses, candidates=terms, load_weight=3_000_000, inflight_weight=0, prefix_weight=0
    )
    publish(brain, loaded)
    # ~3 tokens: slow's prefill (0.12) beats fast's queue; ~400 tokens (16 TTFTs on slow): fast.
    assert echoed(envoy.request(CHAT, chat(text="x" * 10)))["endpoint"] == slow
    assert echoed(envoy.request(CHAT, chat(text="x" * 1600)))["endpoint"] == fast
    harness.slow_started.clear()
    harness.release_slow.clear()
    held = threading.Thread(
        target=envoy.request, args=(CHAT, chat(text="x" * 10), {harness.SLOW_HEADER: "1"})
    )
    held.start()
    try:
        assert harness.slow_started.wait(10)
        # One of ours in flight at slow, beyond the one it ran when scraped (none): queued there.
        assert echoed(envoy.request(CHAT, chat(text="x" * 10)))["endpoint"] == fast
    finally:
        harness.release_slow.set()
        held.join(10)
    assert echoed(envoy.request(CHAT, chat(text="x" * 10)))["endpoint"] == slow


def test_client_sent_routing_headers_are_ignored(envoy: WasmEnvoy) -> None:
    spoofed = {"x-gateway-destination-endpoint": envoy.addresses[3], "x-llm-model": "evil"}
    answer = echoed(envoy.request(CHAT, chat(text=""), spoofed))
    assert answer["endpoint"] == envoy.addresses[0]
    assert answer["headers"]["x-llm-model"] == "m"


def test_unknown_model_is_the_ext_proc_paths_404(envoy: WasmEnvoy) -> None:
    status, headers, body = envoy.request(CHAT, chat(model="gpt-9"))
    expected = RoutingError(
        ErrorKind.MODEL_NOT_FOUND, "model 'gpt-9' does not exist; available: m", "model_not_found"
    )
    assert (status, headers["content-type"], body) == (404, "application/json", expected.body())


def test_oversized_body_gets_the_json_413(wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy) -> None:
    _, brain = wasm
    publish(brain, snapshot_for(envoy.addresses, max_body_bytes=1000))
    body = chat(text="x" * 2000)
    status, _, raw = envoy.request(CHAT, body)
    expected = RoutingError(
        ErrorKind.BODY_TOO_LARGE,
        f"request body is {len(body)} bytes; the limit is 1000 bytes",
        "body_too_large",
    )
    assert (status, raw) == (413, expected.body())


def test_no_endpoint_for_a_known_model_is_a_503_with_retry_after(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    publish(brain, snapshot_for(envoy.addresses, candidates={"m|": {"endpoints": []}}))
    status, headers, raw = envoy.request(CHAT, chat())
    expected = RoutingError(
        ErrorKind.NO_CAPACITY, "no healthy endpoint for model 'm'; retry later", "no_healthy_endpoint"
    )
    assert (status, headers["retry-after"], raw) == (503, "1", expected.body())


def test_a_chain_going_on_to_a_provider_escalates_when_the_fleet_has_no_endpoint(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    brain.decide = lambda headers, raw: {
        "action": "respond",
        "status": 200,
        "headers": [["content-type", "application/json"], ["x-brain", "provider"]],
        "body": "{}",
    }
    snapshot = snapshot_for(envoy.addresses)
    # The fleet's "m" first, then (not in the table) a hosted provider's target.
    for route in snapshot["routes"].values():
        route["then_escalate"] = True
    publish(brain, snapshot)
    before = len(brain.decided)
    assert echoed(envoy.request(CHAT, chat()))["endpoint"] == envoy.addresses[0]  # the fleet has one
    assert len(brain.decided) == before
    snapshot["candidates"] = {"m|": {"endpoints": []}}
    publish(brain, snapshot)
    status, headers, _ = envoy.request(CHAT, chat())
    assert (status, headers["x-brain"]) == (200, "provider")  # not the filter's 503
    assert len(brain.decided) == before + 1


def test_alias_target_rewrites_the_model_and_content_length(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    snapshot = snapshot_for(envoy.addresses)
    snapshot["routes"]["chat|0|alias|*"] = {
        "targets": [["big-model", "gpu"]],
        "headers": [["x-llm-rule", "aliases"], ["x-envoy-max-retries", "1"]],
    }
    snapshot["candidates"]["big-model|gpu"] = {"endpoints": [[envoy.addresses[3], 5]]}
    publish(brain, snapshot)
    answer = echoed(envoy.request(CHAT, chat(model="alias", text='say "hi" \u00e9')))
    assert answer["endpoint"] == envoy.addresses[3]
    assert answer["headers"]["x-llm-model"] == "big-model"
    assert answer["headers"]["x-llm-rule"] == "aliases"
    sent = json.loads(answer["body"])
    assert sent == {"model": "big-model", "messages": [{"role": "user", "content": 'say "hi" \u00e9'}]}
    assert int(answer["headers"]["content-length"]) == len(answer["body"].encode())


def test_policy_rejection_is_answered_from_the_table(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    error = RoutingError(ErrorKind.REJECTED_BY_POLICY, "no", "rejected_by_policy", status_override=403)
    snapshot = snapshot_for(envoy.addresses)
    snapshot["routes"]["chat|0|m|*"] = {"reject": {"status": 403, "body": error.body().decode()}}
    publish(brain, snapshot)
    status, _, raw = envoy.request(CHAT, chat())
    assert (status, raw) == (403, error.body())


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [}',  # invalid JSON
        b'{"model": "m", "messages": []}',  # parse_body's 400
        b'{"model": NaN, "messages": [{"role": "user"}]}',  # Python reads NaN
        b'{"model": "m", "max_tokens": 1.5, "messages": [{"role": "user"}]}',
        b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user"}]}',  # a BOM: json.loads copes
        b'{"model": "\\ud800", "messages": [{"role": "user"}]}',  # lone surrogate
    ],
)
def test_bodies_the_filter_is_not_sure_about_go_to_the_brain(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy, body: bytes
) -> None:
    _, brain = wasm
    brain.decide = lambda headers, raw: {
        "action": "respond",
        "status": 418,
        "headers": [["content-type", "application/json"], ["x-brain", "yes"]],
        "body": json.dumps({"seen": raw.decode("utf-8", "replace"), "path": headers["x-llm-extproc-path"]}),
    }
    status, headers, raw = envoy.request(CHAT + "?q=1", body, {"x-user-id": "u"})
    assert (status, headers["x-brain"]) == (418, "yes")
    assert json.loads(raw) == {"seen": body.decode("utf-8", "replace"), "path": CHAT + "?q=1"}
    assert brain.decided[-1][0]["x-user-id"] == "u"


def test_brain_decisions_route_with_their_headers_and_body(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    new_body = json.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]})
    brain.decide = lambda headers, raw: {
        "action": "route",
        "primary": envoy.addresses[2],
        "headers": [
            ["x-gateway-destination-endpoint", f"{envoy.addresses[2]},{envoy.addresses[1]}"],
            ["x-llm-model", "other"],
            ["x-llm-complexity", "0.500"],
            ["content-length", str(len(new_body))],
        ],
        "body": new_body,
    }
    answer = echoed(envoy.request(CHAT, b'{"model": "m", "messages": []}'))
    assert answer["endpoint"] == envoy.addresses[2]
    assert answer["headers"]["x-llm-complexity"] == "0.500"
    assert answer["body"] == new_body


def test_only_a_decision_naming_a_mirror_cluster_is_mirrored(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm

    def decide(mirror: bool) -> dict[str, Any]:
        headers = [["x-gateway-destination-endpoint", envoy.addresses[0]]]
        return {
            "action": "route",
            "primary": envoy.addresses[0],
            "headers": [*headers, ["x-llm-mirror-cluster", "fleet"]] if mirror else headers,
        }

    def mirrored() -> int:
        return sum("-shadow" in a for server in envoy.fleet for a in server.authorities)  # type: ignore[attr-defined]

    brain.decide = lambda headers, raw: decide(False)
    assert envoy.request(CHAT, b'{"model": "m", "messages": []}')[0] == 200
    brain.decide = lambda headers, raw: decide(True)
    assert envoy.request(CHAT, b'{"model": "m", "messages": []}')[0] == 200
    wait_until(lambda: mirrored() == 1)
    brain.decide = lambda headers, raw: decide(False)
    assert envoy.request(CHAT, b'{"model": "m", "messages": []}')[0] == 200
    time.sleep(0.2)  # a mirror is fire-and-forget: give a wrong one time to arrive
    assert mirrored() == 1


def test_headers_phase_cases_go_to_the_brain(wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy) -> None:
    _, brain = wasm
    brain.decide = lambda headers, raw: {
        "action": "respond",
        "status": 404 if headers["x-llm-extproc-method"] == "POST" else 405,
        "headers": [["content-type", "application/json"]],
        "body": "{}",
    }
    assert envoy.request("/v2/unknown", chat())[0] == 404
    assert envoy.request(CHAT, None, method="GET")[0] == 405


def test_stale_snapshot_escalates_and_a_dead_brain_fails_open(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    publish(brain, snapshot_for(envoy.addresses, stale_after_ms=300))
    brain.up = False  # polls and decisions fail from now on
    before = envoy.stats()
    # Within the bound, the last snapshot still decides...
    assert echoed(envoy.request(CHAT, chat(text="")))["headers"]["x-llm-model"] == "m"

    def undecided() -> bool:
        return "x-llm-model" not in echoed(envoy.request(CHAT, chat()))["headers"]

    wait_until(undecided, 5)
    # ...past it, requests go to the brain; it is down, so Envoy routes them undecided.
    answers = [echoed(envoy.request(CHAT, chat())) for _ in range(8)]
    assert all("x-llm-model" not in a["headers"] for a in answers)
    assert {a["endpoint"] for a in answers} <= set(envoy.addresses)
    stats = envoy.stats()
    assert stats["fail_open"] >= before["fail_open"] + 8
    assert stats["stale_snapshot"] >= before["stale_snapshot"] + 8
    brain.up = True


def test_filter_counts_routed_escalated_and_rejected(envoy: WasmEnvoy) -> None:
    before = envoy.stats()
    envoy.request(CHAT, chat())
    envoy.request(CHAT, chat(model="nope"))
    after = envoy.stats()
    assert after["routed"] == before["routed"] + 1
    assert after["rejected"] == before["rejected"] + 1


def test_observations_reach_the_brain_in_batches(
    wasm: tuple[WasmEnvoy, StaticBrain], envoy: WasmEnvoy
) -> None:
    _, brain = wasm
    reports = len(brain.reports)
    for _ in range(5):
        echoed(envoy.request(CHAT, chat(text="")))

    def totals() -> dict[str, int]:
        summed: dict[str, int] = {}
        for report in brain.reports[reports:]:
            for values in report["endpoints"].values():
                for name in ("responses", "prompt_tokens", "completion_tokens"):
                    summed[name] = summed.get(name, 0) + values[name]
        return summed

    # A response's headers and its usage may land in consecutive batches: wait for both.
    def complete() -> bool:
        seen = totals()
        return seen.get("responses", 0) >= 5 and seen["completion_tokens"] == 5 * seen["responses"]

    wait_until(complete, 5)
    # The echo endpoint reports usage 3 + 5 per response.
    seen = totals()
    assert seen["prompt_tokens"] == 3 * seen["responses"]


def test_module_is_the_one_shipped(tmp_path: Path) -> None:
    from extproc.deploy.wasm_config import wasm_module

    assert wasm_module().read_bytes()[:4] == b"\0asm"
