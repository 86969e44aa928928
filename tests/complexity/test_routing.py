"""Both scores on the request path: policy matches, tenant upgrades, headers and the decision log's features."""

from __future__ import annotations

import json
from pathlib import Path

from extproc import complexity
from extproc.config import ServerConfig
from extproc.fleet.state import FleetState, InFlight
from extproc.headers import COMPLEXITY_HEADER, STRONG_GAIN_HEADER
from extproc.policy.compile import CompiledPolicy, load_policy
from extproc.policy.types import PolicyInput
from extproc.request import ParsedRequest, RequestHeaders, Task, parse_body, parse_headers
from extproc.router import Router
from tests.helpers import LeastInFlightPicker, fleet_snapshot

EASY = "What's the capital of France?"
HARD = "Prove that the sum of the reciprocals of the primes diverges, with a rigorous proof."


def request(text: str) -> tuple[RequestHeaders, ParsedRequest]:
    headers = parse_headers(
        [(":path", "/v1/chat/completions"), (":method", "POST"), ("content-type", "application/json")]
    )
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return headers, parse_body(Task.CHAT, "application/json", json.dumps(body).encode(), 1 << 20)


def router(policy: CompiledPolicy) -> Router:
    fleet = FleetState()
    fleet.publish(fleet_snapshot(3), synced=True)
    return Router(
        ServerConfig(),
        fleet,
        LeastInFlightPicker(),
        InFlight(),
        policy=lambda: policy,
        complexity=complexity.model(),
    )


def write(tmp_path: Path, text: str) -> CompiledPolicy:
    (tmp_path / "p.yaml").write_text(text)
    return load_policy(tmp_path / "p.yaml")


def test_policies_match_either_score_and_both_go_out_as_headers(tmp_path: Path) -> None:
    model = complexity.model()
    easy, hard = (
        model.scores(complexity.Prompt.from_text(EASY)),
        model.scores(complexity.Prompt.from_text(HARD)),
    )
    assert (
        hard.complexity > easy.complexity and easy.strong_gain > hard.strong_gain
    )  # what this test relies on
    gain_cut = (easy.strong_gain + hard.strong_gain) / 2
    policy = write(
        tmp_path,
        f"""
rules:
  - {{name: hard, match: {{complexity: {{gt: {(easy.complexity + hard.complexity) / 2}}}}}, timeout_s: 9}}
  - {{name: gainful, match: {{strong_gain: {{gt: {gain_cut}}}}}, timeout_s: 3}}
default: {{}}
""",
    )
    route = router(policy)
    for text, rule, scores in ((HARD, "hard", hard), (EASY, "gainful", easy)):
        decision = route.decide(*request(text), detail=True)
        assert decision.rule == rule
        headers = dict(decision.set_headers)
        assert headers[COMPLEXITY_HEADER] == f"{scores.complexity:.3f}"
        assert headers[STRONG_GAIN_HEADER] == f"{scores.strong_gain:.3f}"
        assert decision.complexity == scores.complexity and decision.strong_gain == scores.strong_gain
        # the decision log's words: "<feature name> <signed contribution>"
        assert decision.complexity_features is not None and len(decision.complexity_features) == 3
        for words in decision.complexity_features:
            assert any(name in words for name in model.extractor.names), words
            assert words.rsplit(" ", 1)[1][0] in "+-"
    assert route.decide(*request(EASY)).complexity_features is None  # only logged requests pay for it


def test_tenant_upgrades_follow_the_configured_signal(tmp_path: Path) -> None:
    plans = "plans: {smallco: {tier: standard, allow_upgrade: true}}"
    by_complexity = write(tmp_path, f"tenants: {{upgrade_threshold: 0.5, {plans}}}\ndefault: {{}}\n")
    by_gain = write(
        tmp_path,
        f"tenants: {{upgrade_threshold: 0.5, upgrade_signal: strong_gain, {plans}}}\ndefault: {{}}\n",
    )

    def tier(policy: CompiledPolicy, complexity: float, strong_gain: float) -> str:
        inp = PolicyInput(
            "/v1/chat/completions", "POST", {"x-tenant-id": "smallco"}, "m", False, "chat",
            complexity=complexity, strong_gain=strong_gain,
        )  # fmt: skip
        return policy.evaluate(inp).tier

    assert tier(by_complexity, 0.8, 0.1) == "premium" and tier(by_complexity, 0.1, 0.8) == "standard"
    assert tier(by_gain, 0.1, 0.8) == "premium" and tier(by_gain, 0.8, 0.1) == "standard"


def test_policy_explain_prints_both_scores_and_features(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from extproc.cli import main

    (tmp_path / "p.yaml").write_text(
        "rules:\n  - {name: gain, match: {strong_gain: {gt: 0.99}}, timeout_s: 1}\ndefault: {}\n"
    )
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": HARD}]})
    assert main(["explain", "--policy", str(tmp_path / "p.yaml"), "--body", body]) == 0
    out = capsys.readouterr().out
    assert "complexity" in out and "strong_gain" in out and "cue" in out
    assert (
        main(
            ["explain", "--policy", str(tmp_path / "p.yaml"), "--body", body, "--strong-gain", "1", "--json"]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["decision"]["rule"] == "gain" and data["strong_gain"] == 1.0
    assert data["complexity"] == complexity.model().scores(complexity.Prompt.from_text(HARD)).complexity
    assert len(data["complexity_features"]) == 4


def test_the_decision_log_records_both_scores_and_the_top_features(tmp_path: Path) -> None:
    from extproc.observability.decision_log import DecisionLog, DecisionLogConfig
    from extproc.observability.telemetry import Telemetry
    from extproc.server import ExternalProcessor, _StreamState
    from tests.helpers import body_message, headers_message

    log = DecisionLog(DecisionLogConfig(path=str(tmp_path / "decisions.log"), sample_rate=1.0))
    telemetry = Telemetry(log, expect_observer=False)
    processor = ExternalProcessor(ServerConfig(), router(write(tmp_path, "default: {}\n")), telemetry)
    state = _StreamState()
    processor.on_request_headers(headers_message(x_request_id="r1").request_headers, state)
    body = {"model": "m", "messages": [{"role": "user", "content": HARD}]}
    processor.on_request_body(body_message(body).request_body, state)
    assert state.record is not None
    telemetry.routed(state.record)
    log.close()
    line = json.loads((tmp_path / "decisions.log").read_text().splitlines()[0])
    scores = complexity.model().scores(complexity.Prompt.from_text(HARD))
    assert line["complexity"] == round(scores.complexity, 4) and line["strong_gain"] == round(
        scores.strong_gain, 4
    )
    assert len(line["complexity_features"]) == 3
    assert line["complexity_features"] == complexity.model().top_features(
        parse_body(Task.CHAT, "application/json", json.dumps(body).encode(), 1 << 20)
    )
    assert "prompt" not in line


def test_both_scores_feed_their_histograms(tmp_path: Path) -> None:
    from extproc.observability.metrics import Metrics

    route = router(write(tmp_path, "default: {}\n"))
    route.metrics = metrics = Metrics()
    for text in (EASY, HARD):
        route.decide(*request(text))
    registry = metrics.registry
    assert registry.get_sample_value("llm_extproc_complexity_score_count") == 2
    assert registry.get_sample_value("llm_extproc_strong_gain_score_count") == 2
    # the easy prompt falls in the lowest complexity bucket, the hard one does not
    assert registry.get_sample_value("llm_extproc_complexity_score_bucket", {"le": "0.1"}) == 1
