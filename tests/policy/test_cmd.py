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
