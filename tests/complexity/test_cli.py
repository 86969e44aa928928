# ruff: noqa: RUF001  (Chinese prompts: full-width punctuation is intended)
"""`llm-extproc complexity`: the JSON-lines contract, --eval and --explain, and `complexity-train`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extproc import complexity
from extproc.complexity.evaluate import apgr, spearman
from extproc.complexity.features import Prompt


def run(*args: str, stdin: str = "") -> str:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def test_stdin_lines_get_both_scores_in_order_and_bad_lines_an_error() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Prove Fermat's little theorem."},
    ]
    lines = [
        json.dumps({"prompt": "What is 2+2?", "id": 1}),
        "not json",
        json.dumps({"prompt": "中文 证明"}, ensure_ascii=False),
        "[1]",
        json.dumps({"prompt": 5}),
        json.dumps({"prompt": ""}),
        json.dumps({"prompt": "x " * 600_000}),
        json.dumps({"prompt": "\ud800 lone surrogate 😀"}),
        json.dumps({"messages": messages, "id": "chat"}),
        json.dumps({}),
    ]
    records = [json.loads(line) for line in run("complexity", stdin="\n".join(lines) + "\n\n").splitlines()]
    assert len(records) == len(lines)
    for i in (1, 3, 4):
        assert set(records[i]) == {"error"}
    scored = [r for i, r in enumerate(records) if i not in (1, 3, 4)]
    for record in scored:
        assert 0.0 <= record["complexity"] <= 1.0 and 0.0 <= record["strong_gain"] <= 1.0
    assert records[0]["id"] == 1 and records[0]["prompt"] == "What is 2+2?"
    model = complexity.model()
    expected = model.scores(Prompt.from_messages(messages))
    assert records[8]["id"] == "chat"
    assert records[8]["complexity"] == pytest.approx(expected.complexity, abs=1e-6)
    assert records[8]["strong_gain"] == pytest.approx(expected.strong_gain, abs=1e-6)
    assert records[0]["complexity"] == pytest.approx(model.score("What is 2+2?"), abs=1e-6)


def _rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    graded = [
        {"prompt": "hi", "level": 1, "lang": "en"},
        {"prompt": "谢谢", "level": 1, "lang": "zh"},
        {"prompt": "Translate 'good night' to French.", "level": 2, "lang": "en"},
        {"prompt": "把这句话翻译成英文：我明天不去上班。", "level": 2, "lang": "zh"},
        {
            "prompt": "Write a SQL query joining orders and customers with totals per region.",
            "level": 3,
            "lang": "en",
        },
        {
            "prompt": "写一个Python函数，解析日志文件并按小时统计错误数量，输出JSON。",
            "level": 3,
            "lang": "zh",
        },
        {
            "prompt": "Prove that there are infinitely many primes p with p = 3 mod 4.",
            "level": 4,
            "lang": "en",
        },
        {"prompt": "证明：存在无穷多个形如4k+3的素数，给出严格证明。", "level": 4, "lang": "zh"},
    ]
    labelled = [
        {
            "prompt": f"question {i} " * (i + 1),
            "weak_correct": bool(rng.random() < 0.5),
            "strong_correct": True,
        }
        for i in range(30)
    ]
    return graded + labelled


def test_eval_reports_spearman_per_language_and_apgr_for_both_heads(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    result = json.loads(run("complexity", "--eval", str(path), "--json"))
    model = complexity.model()
    graded = [r for r in rows if "level" in r]
    scores = [model.score(r["prompt"]) for r in graded]
    assert result["rows"] == len(rows) and result["graded"]["rows"] == len(graded)
    assert result["graded"]["spearman"] == pytest.approx(spearman(scores, [r["level"] for r in graded]))
    chinese = [(s, r["level"]) for s, r in zip(scores, graded, strict=True) if r["lang"] == "zh"]
    assert result["graded"]["spearman_by_language"]["zh"]["spearman"] == pytest.approx(
        spearman([s for s, _ in chinese], [level for _, level in chinese])
    )
    assert set(result["graded"]["median_by_level"]) == {"1", "2", "3", "4"}
    labelled = [r for r in rows if "weak_correct" in r]
    weak = [r["weak_correct"] for r in labelled]
    strong = [r["strong_correct"] for r in labelled]
    expected = apgr([model.scores(Prompt.from_text(r["prompt"])).strong_gain for r in labelled], weak, strong)
    assert result["labelled"]["strong_gain"] == pytest.approx(expected)
    assert {"apgr", "strong_share_for_50pct_gap", "strong_share_for_80pct_gap"} <= set(
        result["labelled"]["complexity"]
    )
    text = run("complexity", "--eval", str(path))
    assert "Spearman" in text and "zh" in text and "APGR" in text and "strong_gain" in text


def test_explain_shows_both_scores_and_named_contributions() -> None:
    prompt = "Prove that the sum of the reciprocals of the primes diverges."
    explained = json.loads(run("complexity", "--explain", prompt, "--json", "--top", "4"))
    expected = complexity.scores(prompt)
    assert explained["complexity"] == pytest.approx(expected.complexity)
    assert explained["strong_gain"] == pytest.approx(expected.strong_gain)
    names = [f["name"] for f in explained["features"]]
    assert len(names) == 4 and set(names) <= set(complexity.model().extractor.names)
    text = run("complexity", "--explain", "-", stdin=prompt)
    assert "complexity" in text and "strong_gain" in text and "proof cue" in text


def test_complexity_train_writes_a_model_the_cli_loads(tmp_path: Path) -> None:
    graded = tmp_path / "graded.jsonl"
    rows = [
        {
            "id": str(i),
            "level": 1 + i % 5,
            "prompt": ("prove the theorem " if i % 5 > 2 else "hello ") * (1 + i % 5),
        }
        for i in range(60)
    ]
    graded.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "model.npz"
    report = tmp_path / "report.json"
    printed = run(
        "complexity-train",
        "--graded",
        str(graded),
        "--routing",
        "none",
        "--out",
        str(out),
        "--report",
        str(report),
    )
    assert "5-fold CV Spearman" in printed and out.exists()
    trained = complexity.ComplexityModel.load(out)
    shipped = complexity.model()
    # the strong_gain head is kept, the complexity head learnt from the file
    assert (
        trained.scores(Prompt.from_text("hello")).strong_gain
        == shipped.scores(Prompt.from_text("hello")).strong_gain
    )
    assert trained.score("prove the theorem " * 5) > trained.score("hello")
    assert json.loads(report.read_text())["complexity"]["rows"] == 60
