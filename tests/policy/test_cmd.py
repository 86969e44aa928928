from __future__ import annotations

import json
from pathlib import Path

import pytest

from extproc.cli import main

POLICIES = Path(__file__).parents[2] / "policies"


def test_validate_ok_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(POLICIES / "canary.yaml")]) == 0
    assert capsys.readouterr().out.startswith(f"OK {POLICIES / 'canary.yaml'} (1 rules, version ")
    bad = Path(__file__).parents[1] / "data" / "policies" / "bad_split.yaml"
    assert main(["validate", str(bad)]) == 1
    assert "rules[0].split: weights must sum to 100, got 90" in capsys.readouterr().err


def test_explain_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "explain",
        "--policy",
        str(POLICIES / "cost-routing.yaml"),
        "--header",
        "x-tenant-id:bigcorp",
        "--complexity",
        "0.2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "matched    premium" in out and "rewrite    body model 'llama-3-8b' -> 'llama-3-70b'" in out
    assert "x-envoy-max-retries: 2" in out
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["decision"]["rule"] == "premium" and data["decision"]["tier"] == "premium"


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Policy" and "rules" in schema["properties"]


def test_explain_accepts_every_routed_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "apis.yaml"
    policy.write_text(
        "rules:\n"
        "  - {name: agents, match: {task: [responses, messages]}, priority: premium}\n"
        "  - {name: audio, match: {task: [transcription]}, timeout_s: 300}\n"
        "default: {}\n"
    )
    cases = [
        ("/v1/responses", '{"model": "m", "input": "hi"}', "agents"),
        (
            "/v1/messages",
            '{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}',
            "agents",
        ),
        ("/v1/rerank", '{"model": "m", "query": "q", "documents": ["a"]}', "default"),
        ("/tokenize", '{"model": "m", "prompt": "a"}', "default"),
        # Audio paths take the form's fields as a JSON object.
        ("/v1/audio/transcriptions", '{"model": "whisper", "prompt": "names"}', "audio"),
    ]
    for path, body, rule in cases:
        assert main(["explain", "--policy", str(policy), "--path", path, "--body", body, "--json"]) == 0, path
        assert json.loads(capsys.readouterr().out)["decision"]["rule"] == rule, path
    assert (
        main(["explain", "--policy", str(policy), "--path", "/v1/messages", "--body", '{"model": "m"}']) == 1
    )
    assert "max_tokens" in capsys.readouterr().err


def test_explain_shows_the_learned_speeds_of_the_chosen_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from prometheus_client import generate_latest

    from extproc.fleet.state import Endpoint, build_snapshot
    from extproc.observability.metrics import Metrics

    snapshot = build_snapshot(
        [
            Endpoint("10.0.0.1:8000", pool="fast", models=("m",), gpu_class="a100"),
            Endpoint("10.0.0.2:8000", pool="slow", models=("m",), gpu_class="t4"),
        ],
        {},
        version=1,
    )
    metrics = Metrics()
    metrics.watch_speeds(lambda: (snapshot, np.array([1e-4, 5e-4]), np.array([0.01, 0.04])))
    page = tmp_path / "metrics.txt"
    page.write_bytes(generate_latest(metrics.registry))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "pools: [{name: fast, models: [m]}, {name: slow, models: [m]}]\ndefault: {route: {pool: fast, model: m}}\n"
    )
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert main(["explain", "--policy", str(policy), "--body", body, "--speeds", str(page)]) == 0
    out = capsys.readouterr().out
    assert "speed      10.0.0.1:8000 (fast, a100): prefill 10000 tok/s, decode 100.0 tok/s" in out
    assert "10.0.0.2:8000" not in out  # not in the chosen pool
    assert main(["explain", "--policy", str(policy), "--body", body, "--speeds", str(page), "--json"]) == 0
    speeds = json.loads(capsys.readouterr().out)["speeds"]
    assert [s["endpoint"] for s in speeds] == ["10.0.0.1:8000"] and speeds[0]["decode_tokens_per_s"] == 100.0
