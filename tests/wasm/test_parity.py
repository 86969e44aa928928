"""Parity: generated (policy, fleet, request) cases through the Wasm filter in a real Envoy and
through the ext_proc path's code, against the same frozen snapshot.

The ext_proc side is the brain's decide(): ExternalProcessor's header and body phases, the
Router with the compiled policy, parse_body and the error bodies; its picker is the snapshot
picker (extproc.wasm.reference), so both sides pick from the same frozen scores. Requests the
filter escalates are answered by that same decide(), so they agree by construction: the harness
counts them and requires the filter to decide most cases itself.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extproc.config import ServerConfig
from extproc.deploy.wasm_config import DECISION_HEADERS, PROVIDER_DECISION_HEADERS
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot
from extproc.headers import MODEL_HEADER, PROVIDER_HEADER, REQUESTED_MODEL_HEADER
from extproc.policy.compile import CompiledPolicy, load_policy
from extproc.router import Router
from extproc.scheduler.scheduler import Scheduler
from extproc.server import ExternalProcessor
from extproc.wasm.brain import Brain
from extproc.wasm.reference import PrefixOwners, SnapshotPicker
from extproc.wasm.snapshot import build_snapshot as build_routing_snapshot
from tests.helpers import wait_until
from tests.wasm.harness import StaticBrain, WasmEnvoy

pytestmark = pytest.mark.envoy

EXPECTED_TIMEOUT = "x-envoy-expected-rq-timeout-ms"
# What a provider decision puts on the request (the brain's answer, extproc.wasm.brain).
PROVIDER_ROUTE_HEADERS = tuple(
    k for k in dict.fromkeys((*DECISION_HEADERS, *PROVIDER_DECISION_HEADERS)) if k != "content-length"
)
ROUTE_TIMEOUT_MS = 300_000  # extproc/deploy/envoy/wasm.yaml's route timeout
SCENARIOS = 24
REQUESTS_PER_SCENARIO = 130
MODELS = ("llama-a", "llama-b", "qwen-c")
ALIASES = ("gpt-x", "gpt-y")
TENANTS = ("gold", "bronze", "upg", "capped", "stranger")

RULES = [
    "  - {name: premium-big, match: {tier: [premium]}, route: {model: gpt-x}}",
    "  - {name: stream-timeout, match: {stream: true}, timeout_s: 30}",
    "  - {name: blocked, match: {model: [qwen-c], task: [embedding]}, reject: {status: 403, message: 'qwen \"embeds\" are off'}}",
    "  - {name: batch-pri, match: {tier: [batch]}, priority: batch}",
    "  - {name: few-retries, match: {model: [llama-b]}, retries: {count: 1, per_try_timeout_s: 5}}",
    "  - {name: to-b, match: {task: [completion]}, route: {model: llama-b, pool: p2}, fallback: [gpt-y]}",
    "  - {name: gold-tenant, match: {tenant: [gold], stream: false}, route: {model: gpt-y}}",
    "  - {name: any-of, match: {any_of: [{model: [gpt-y]}, {tenant: [stranger]}]}, priority: premium}",
]
# Rules the table cannot express: the whole policy then goes to the brain.
DYNAMIC_RULES = [
    "  - {name: debug, match: {headers: {x-debug: {present: true}}}, route: {model: llama-b}}",
    "  - {name: long, match: {prompt_tokens: {gt: 50}}, route: {model: llama-a}}",
]


def policy_text(rng: random.Random) -> str:
    rules = rng.sample(RULES, rng.randint(0, len(RULES)))
    if rng.random() < 0.1:
        rules.insert(rng.randint(0, len(rules)), rng.choice(DYNAMIC_RULES))
    plans = [
        "    gold: {tier: premium}",
        "    bronze: {tier: batch}",
        "    upg: {tier: standard, allow_upgrade: true}",
    ]
    if rng.random() < 0.5:
        plans.append("    capped: {limits: {requests_per_minute: 100000}}")
    fallbacks = "fallbacks:\n  llama-a: [llama-b]\n" if rng.random() < 0.6 else ""
    default = rng.choice(["default: {}", "default: {timeout_s: 60}", "default: {retries: {count: 2}}"])
    return (
        "tenants:\n  header: x-tenant-id\n  plans:\n" + "\n".join(plans) + "\n"
        "pools:\n  - {name: p1, models: [llama-a, llama-b]}\n  - {name: p2, models: [llama-b, qwen-c]}\n"
        "models:\n  gpt-x: {model: llama-a, pool: p1}\n  gpt-y: {model: qwen-c}\n"
        + fallbacks
        + ("rules:\n" + "\n".join(rules) + "\n" if rules else "")
        + default
        + "\n"
    )


HOSTED_ONLY = "gpt-h"  # served by the provider alone
SPILLED = "gpt-s"  # the provider's model that only spill-over sends requests to
PROVIDER_RULES = [
    "  - {name: premium-hosted, match: {tier: [premium], model: [gpt-x]}, route: {model: gpt-h, pool: hosted}, fallback: [llama-a]}",
    "  - {name: b-streams-hosted, match: {model: [llama-b], stream: true}, route: {model: llama-b, pool: hosted}}",
    "  - {name: stream-timeout, match: {stream: true}, timeout_s: 30}",
    "  - {name: blocked, match: {model: [gpt-h], task: [embedding]}, reject: {status: 403, message: 'no hosted embeddings'}}",
    "  - {name: batch-pri, match: {tier: [batch]}, priority: batch}",
    "  - {name: few-retries, match: {model: [llama-b]}, retries: {count: 1, per_try_timeout_s: 5}}",
]
PRICE = "{input_per_1m: 1, output_per_1m: 2}"


def provider_policy_text(rng: random.Random) -> str:
    """Provider pool "hosted" beside the fleet's p1 and p2: llama-b served by both, gpt-h and
    gpt-s by the provider only, llama-a and qwen-c by the fleet only; spill-over on or off, for
    tenants with and without hosted plans; objectives that spill always, sometimes or never."""
    rules = rng.sample(PROVIDER_RULES, rng.randint(0, len(PROVIDER_RULES)))
    default_spill = rng.choice(["true", "false"])
    fallbacks = ["fallbacks:"]
    if rng.random() < 0.5:
        fallbacks.append("  qwen-c: [gpt-h]")  # the fleet's model, the provider when it cannot
    if rng.random() < 0.5:
        fallbacks.append("  llama-a: [llama-b]")
    spillover = ""
    if rng.random() < 0.75:
        objective = rng.choice([0.01, 0.2, 100.0])
        spillover = (
            f"spillover:\n  ttft_objective_s: {objective}\n  queue_s_per_request: 0.05\n"
            f"  targets: {{llama-a: {{model: {SPILLED}, pool: hosted}}}}\n"
        )
    return (
        "tenants:\n  header: x-tenant-id\n  plans:\n"
        "    gold: {tier: premium, hosted: {spillover: true}}\n"
        "    bronze: {tier: batch}\n"
        "    capped: {hosted: {spillover: true, budget_usd_per_hour: 5}}\n"
        f"  default_hosted: {{spillover: {default_spill}}}\n"
        "pools:\n  - {name: p1, models: [llama-a, llama-b]}\n  - {name: p2, models: [llama-b, qwen-c]}\n"
        "  - name: hosted\n    kind: provider\n    models: [gpt-h, gpt-s, llama-b]\n"
        "    provider: {base_url: 'https://api.provider.test/v1', credential: {env: PARITY_NOT_READ}}\n"
        f"    prices: {{gpt-h: {PRICE}, gpt-s: {PRICE}, llama-b: {PRICE}}}\n"
        "models:\n  gpt-x: {model: llama-a, pool: p1}\n  gpt-y: {model: qwen-c}\n"
        + ("\n".join(fallbacks) + "\n" if len(fallbacks) > 1 else "")
        + spillover
        + ("rules:\n" + "\n".join(rules) + "\n" if rules else "")
        + "default: {}\n"
    )


def fleet_for(addresses: list[str], rng: random.Random, now: float) -> FleetState:
    endpoints, metrics = [], {}
    for address in addresses:
        pool = rng.choice(["p1", "p2"])
        served = ("llama-a", "llama-b") if pool == "p1" else ("llama-b", "qwen-c")
        models = tuple(m for m in served if rng.random() < 0.8) or served[:1]
        endpoints.append(Endpoint(address, pool=pool, models=models, gpu_class=rng.choice(["a100", "t4"])))
        metrics[address] = EndpointMetrics(
            waiting=float(rng.choice([0, 0, 1, 3, 12])),
            running=float(rng.randint(0, 8)),
            kv_usage=rng.random(),
            healthy=rng.random() > 0.1,
            scraped_at=now - rng.choice([0.0, 0.01, 5.0]),
        )
    fleet = FleetState()
    fleet.publish(build_snapshot(endpoints, metrics, version=1, now=now - 60), synced=True)
    fleet.publish(
        build_snapshot(endpoints, metrics, version=2, previous=fleet.snapshot, now=now), synced=True
    )
    return fleet


def text(rng: random.Random) -> str:
    return rng.choice(
        [
            "",
            "hi",
            'say "hi" \\ there',
            "naïve café ✓ 漢字",
            "tab\tnew\nline",
            "x" * 300,
            "🙂 emoji",
            "same prefix " * 30,
            # Long prompts (the filter scans strings over 1 KB once per request).
            "long " * 400,
            'naïve "quoted" \\ 漢字 ' * 80,
        ]
    )


def request_for(
    rng: random.Random, models: tuple[str, ...] = (*MODELS, *MODELS, *ALIASES)
) -> tuple[str, dict[str, str], bytes]:
    # Mostly what clients send; a share of what they should not.
    odd = rng.random() < 0.15
    model = rng.choice(["unknown-model", "m'quote", ""]) if odd else rng.choice(models)
    content_type = (
        rng.choice(["application/json; charset=utf-8", "text/plain"]) if odd else "application/json"
    )
    headers = {"content-type": content_type}
    if rng.random() < 0.4:
        headers["x-tenant-id"] = rng.choice(TENANTS)
    if rng.random() < 0.3:
        headers["x-user-id"] = f"user-{rng.randint(0, 5)}"
    if rng.random() < 0.05:
        headers["x-debug"] = "1"
    task = rng.choice(["chat", "chat", "chat", "completion", "embedding"])
    body: dict[str, Any] = {"model": model}
    if rng.random() < 0.4:
        body["stream"] = rng.choice(["yes", None]) if odd else rng.choice([True, False])
    if rng.random() < 0.2:
        body["user"] = rng.choice(["u1", "", 7] if odd else ["u1", "u2", ""])
    if rng.random() < 0.2:
        body["max_tokens"] = rng.choice([-1, 2.5, True] if odd else [5, 0, None])
    if task == "chat":
        path = "/v1/chat/completions"
        messages: list[Any] = []
        for _ in range(rng.randint(0 if odd else 1, 3)):
            content: Any = text(rng)
            if rng.random() < 0.25:
                content = [
                    {"type": "text", "text": text(rng)},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    text(rng),
                ]
            messages.append({"role": rng.choice(["system", "user", "assistant"]), "content": content})
        if odd and rng.random() < 0.3:
            messages.append("not an object")
        body["messages"] = messages
    elif task == "completion":
        path = "/v1/completions"
        body["prompt"] = rng.choice([text(rng), [text(rng), text(rng)], [1, 2, 3]])
    else:
        path = "/v1/embeddings"
        body["input"] = rng.choice([text(rng), [text(rng)]])
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    roll = rng.random() if odd else 1.0
    if roll < 0.2:
        raw = raw[: len(raw) // 2]  # truncated JSON
    elif roll < 0.3:
        raw = b""
    # Draws of their own, so the main sequence (and the cases it covers) stays as it was.
    side = random.Random(zlib.crc32(raw))
    if task == "chat" and not odd and side.random() < 0.15:
        # A conversation: one long system prompt, then some turns of one of a few chats. Its
        # prompt shares leading blocks with earlier cases' (the system prompt, earlier turns):
        # prefix ownership by block chains, with every depth of shared run.
        chat_id = side.randint(0, 3)
        turns = [{"role": "system", "content": "You are a careful assistant. Answer briefly. " * 9}]
        for turn in range(side.randint(0, 6)):
            turns.append({"role": "user", "content": f"chat {chat_id} question {turn}: " + "why? " * 15})
            turns.append({"role": "assistant", "content": f"answer {turn}: " + "because. " * 12})
        turns.append({"role": "user", "content": f"chat {chat_id} last: " + "and then? " * 5})
        body["messages"] = turns
        raw = json.dumps(body, ensure_ascii=False).encode()
    if side.random() < 0.05:
        # A raw byte JSON or UTF-8 forbids (or allows: a tab) somewhere in the body.
        at = side.randint(0, len(raw))
        raw = raw[:at] + side.choice([b"\x01", b"\x1f", b"\t", b"\xff", b"\xc3", b"\xe6\xbc"]) + raw[at:]
    elif side.random() < 0.1:
        # A long plain run, then what needs a look, at any offset of the filter's 64- and
        # 16-byte steps.
        run = (
            "p" * side.randint(64, 400)
            + side.choice(['"', "\\", "\u0001", "é", "漢", "🙂"])
            + "q" * side.randint(0, 80)
        )
        raw = raw.replace(
            b'"content": "', b'"content": "' + json.dumps(run, ensure_ascii=False)[1:-1].encode(), 1
        )
    if rng.random() < 0.05:
        raw = raw.replace(b'"model"', b'"mod\\u0065l"', 1)  # an escaped key
    elif rng.random() < 0.05:
        raw = b'{"model": "llama-a", ' + raw[1:]  # a duplicate key: the last wins
    if rng.random() < 0.03:
        path += "?api-version=1"
    return path, headers, raw


class ExtprocSide:
    """The ext_proc path's code deciding from the frozen snapshot."""

    def __init__(
        self, snapshot: dict[str, Any], fleet: FleetState, policy: CompiledPolicy | None, owners: PrefixOwners
    ) -> None:
        config = ServerConfig(complexity_header=False, metrics_port=0)
        building = Router(config, fleet, Scheduler(), InFlight(), policy=lambda: policy)
        self.owners = owners
        self.picker = SnapshotPicker(snapshot, fleet.snapshot, building.candidates, owners)
        router = Router(config, fleet, self.picker, InFlight(), policy=lambda: policy)
        self.brain = Brain(ExternalProcessor(config, router))
        self.loop = asyncio.new_event_loop()

    def decide(self, path: str, headers: dict[str, str], body: bytes, learn: bool = True) -> dict[str, Any]:
        """``learn``: whether this pick teaches prefix ownership, as the filter's own picks do
        (a request the filter escalates is picked by the brain, and the filter learns nothing)."""
        pairs = [(":path", path), (":method", "POST"), *headers.items()]
        self.picker.prefix_owners = self.owners if learn else copy.deepcopy(self.owners)
        return self.loop.run_until_complete(self.brain.decide(pairs, body))


def outcome_via_envoy(envoy: WasmEnvoy, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    status, reply_headers, raw = envoy.request(path, body, headers)
    if status == 200 and reply_headers.get("x-gateway-destination-endpoint-served"):
        echoed = json.loads(raw)
        seen = echoed["headers"]
        if PROVIDER_HEADER in seen:
            # A provider decision: this Envoy has no provider route, so it reached an echo
            # endpoint with the provider's headers, path header and body (docs/wasm.md).
            return {
                "action": "provider",
                "headers": {k: seen[k] for k in PROVIDER_ROUTE_HEADERS if k in seen}
                | {EXPECTED_TIMEOUT: seen[EXPECTED_TIMEOUT]},
                "body": json.loads(echoed["body"]),
                "length_ok": int(seen["content-length"]) == len(echoed["body"].encode()),
            }
        return {
            "action": "route",
            "headers": {k: seen[k] for k in DECISION_HEADERS if k in seen and k != "content-length"}
            | {EXPECTED_TIMEOUT: seen[EXPECTED_TIMEOUT]},
            "served_by": echoed["endpoint"],
            "body": json.loads(echoed["body"]),
            "length_ok": int(seen["content-length"]) == len(echoed["body"].encode()),
        }
    return {
        "action": "respond",
        "status": status,
        "body": raw,
        "content-type": reply_headers.get("content-type"),
        "retry-after": reply_headers.get("retry-after"),
    }


def outcome_via_extproc(answer: dict[str, Any], original: bytes) -> dict[str, Any]:
    if answer["action"] == "route":
        headers = dict(answer["headers"])
        provider = PROVIDER_HEADER in headers
        headers.pop("content-length", None)
        # Envoy's router consumes its x-envoy-* request headers; what reaches the endpoint is
        # the timeout they imply (the per-try timeout when there is one).
        timeout = headers.pop("x-envoy-upstream-rq-timeout-ms", str(ROUTE_TIMEOUT_MS))
        per_try = headers.pop("x-envoy-upstream-rq-per-try-timeout-ms", None)
        headers.pop("x-envoy-max-retries", None)
        headers.pop("x-envoy-retry-on", None)
        headers[EXPECTED_TIMEOUT] = per_try or timeout
        if provider:
            return {
                "action": "provider",
                "headers": headers,
                "body": json.loads(answer["body"]),
                "length_ok": True,
            }
        return {
            "action": "route",
            "headers": headers,
            "served_by": headers["x-gateway-destination-endpoint"].split(",")[0],
            "body": json.loads(answer.get("body", original)),
            "length_ok": True,
        }
    headers = dict(answer["headers"])
    return {
        "action": "respond",
        "status": answer["status"],
        "body": answer["body"].encode(),
        "content-type": headers.get("content-type"),
        "retry-after": headers.get("retry-after"),
    }


@dataclass
class Parity:
    envoy: WasmEnvoy
    brain: StaticBrain
    owners: PrefixOwners  # the filter's VM keeps its prefix ownership across snapshots and tests


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parity]:
    brain = StaticBrain()
    brain.start()
    envoy = WasmEnvoy(6, tmp_path_factory.mktemp("parity"), brain.port, poll_ms=20)
    try:
        yield Parity(envoy, brain, PrefixOwners())
    finally:
        envoy.stop()


@dataclass
class Counts:
    cases: int = 0
    decided_by_filter: int = 0
    routed_by_filter: int = 0  # decided in the filter and sent to the fleet
    to_provider: int = 0  # escalated and sent to the provider
    spilled: int = 0  # ... by spill-over (a fleet model's request, the spill target's model)


def run_scenarios(
    parity: Parity,
    rng: random.Random,
    scenarios: int,
    policy_for: Callable[[int], CompiledPolicy | None],
    request: Callable[[], tuple[str, dict[str, str], bytes]],
    tag: str,
) -> Counts:
    """Each scenario: a random fleet and ``policy_for(scenario)``, its snapshot published to the
    filter, then REQUESTS_PER_SCENARIO requests through Envoy and through the ext_proc path."""
    envoy, brain = parity.envoy, parity.brain
    counts = Counts()
    for scenario in range(scenarios):
        now = time.monotonic()
        fleet = fleet_for(envoy.addresses, rng, now)
        policy = policy_for(scenario)
        building = Router(
            ServerConfig(complexity_header=False),
            fleet,
            Scheduler(),
            InFlight(),
            policy=lambda policy=policy: policy,  # type: ignore[misc]
        )
        snapshot = build_routing_snapshot(building, now)
        snapshot["version"] = f"{tag}{scenario}-{snapshot['version']}"
        extproc = ExtprocSide(snapshot, fleet, policy, parity.owners)
        brain.decide = lambda headers, raw, side=extproc: side.decide(  # type: ignore[misc]
            headers["x-llm-extproc-path"],
            {k: v for k, v in headers.items() if not k.startswith(("x-llm-extproc-", "x-envoy-"))},
            raw,
            learn=False,
        )
        brain.snapshot = snapshot
        wait_until(lambda version=snapshot["version"]: brain.confirmed.get(version, 0) >= 6)
        for _ in range(REQUESTS_PER_SCENARIO):
            path, headers, body = request()
            escalated = len(brain.decided)
            via_envoy = outcome_via_envoy(envoy, path, headers, body)
            by_filter = len(brain.decided) == escalated
            via_extproc = outcome_via_extproc(extproc.decide(path, headers, body, learn=by_filter), body)
            assert via_envoy == via_extproc, (
                f"{tag}{scenario} {path} {headers} {body!r}\n{via_envoy}\n{via_extproc}"
            )
            counts.cases += 1
            counts.decided_by_filter += by_filter
            counts.routed_by_filter += by_filter and via_envoy["action"] == "route"
            if via_envoy["action"] == "provider":
                assert not by_filter  # the filter never picks a provider itself
                counts.to_provider += 1
                routed = via_envoy["headers"]
                counts.spilled += routed[MODEL_HEADER] == SPILLED != routed[REQUESTED_MODEL_HEADER]
        extproc.loop.close()
    return counts


def test_filter_and_extproc_path_agree_on_generated_cases(parity: Parity, tmp_path: Path) -> None:
    rng = random.Random(19)

    def policy_for(scenario: int) -> CompiledPolicy | None:
        if not scenario % 4:
            return None
        (tmp_path / f"p{scenario}.yaml").write_text(policy_text(rng))
        return load_policy(tmp_path / f"p{scenario}.yaml")

    started = time.monotonic()
    counts = run_scenarios(parity, rng, SCENARIOS, policy_for, lambda: request_for(rng), "plain-")
    elapsed = time.monotonic() - started
    print(f"parity: {counts.cases} cases, {counts.decided_by_filter} decided in the filter, {elapsed:.1f} s")
    assert counts.cases == SCENARIOS * REQUESTS_PER_SCENARIO
    # Most generated cases are valid requests the table can decide: the filter must take them.
    assert counts.decided_by_filter > counts.cases * 0.5
    assert not math.isnan(elapsed)


PROVIDER_SCENARIOS = 12


def test_filter_and_extproc_path_agree_with_hosted_providers(parity: Parity, tmp_path: Path) -> None:
    """Policies with a provider pool: rows that may reach the provider (its models, rules and
    fallbacks naming it, spill-over tenants' spilling models) are escalated and answered by the
    ext_proc path's code; every other row is the filter's and must match that code's answer."""
    rng = random.Random(23)

    def policy_for(scenario: int) -> CompiledPolicy:
        (tmp_path / f"p{scenario}.yaml").write_text(provider_policy_text(rng))
        return load_policy(tmp_path / f"p{scenario}.yaml")

    models = (*MODELS, *MODELS, *ALIASES, HOSTED_ONLY, SPILLED)
    counts = run_scenarios(
        parity, rng, PROVIDER_SCENARIOS, policy_for, lambda: request_for(rng, models), "hosted-"
    )
    print(f"parity with providers: {counts}")
    assert counts.cases == PROVIDER_SCENARIOS * REQUESTS_PER_SCENARIO
    # Both kinds of rows were exercised: fleet rows decided in the filter, provider decisions
    # (direct and by spill-over) escalated.
    assert counts.routed_by_filter > counts.cases * 0.2
    assert counts.to_provider > counts.cases * 0.1
    assert counts.spilled > 0
