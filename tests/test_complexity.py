from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extproc import complexity
from extproc.complexity_train import apgr, cross_validate, read_labelled

DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing" / "dev.jsonl"


def test_apgr_orders_random_perfect_and_reversed() -> None:
    rng = np.random.default_rng(0)
    weak = rng.random(20_000) < 0.6
    strong = weak | (rng.random(20_000) < 0.5)
    gain = strong.astype(float) - weak.astype(float)
    perfect = apgr(gain, weak, strong)["apgr"]
    reverse = apgr(-gain, weak, strong)["apgr"]
    random = apgr(rng.random(20_000), weak, strong)["apgr"]
    assert reverse < 0.3 < random < 0.55 < perfect
    assert abs(random - 0.5) < 0.05
    metrics = apgr(gain, weak, strong)
    assert metrics["strong_share_for_50pct_gap"] < metrics["strong_share_for_80pct_gap"] <= 1.0


def test_hand_made_apgr() -> None:
    # Two prompts: only the first gains from the strong model. Sending it first recovers the gap at once.
    result = apgr([1.0, 0.0], [False, True], [True, True])
    assert result["strong_share_for_50pct_gap"] == 0.5 and result["apgr"] == pytest.approx(0.75)


def test_scores_are_in_range_deterministic_and_handle_any_text() -> None:
    texts = [
        "",
        "hi",
        "\u8bc1\u660e\uff1a\u5bf9\u4efb\u610f\u6b63\u6574\u6570n\uff0cn^3-n\u80fd\u88ab6\u6574\u9664",
        "😀" * 1000,
        "x" * 2_000_000,
        "\ud800 lone surrogate",
    ]
    for text in texts:
        value = complexity.score(text)
        assert 0.0 <= value <= 1.0
        assert complexity.score(text) == value


def test_explain_adds_up_to_the_raw_score() -> None:
    text = "A train travels 60 miles per hour for 2.5 hours. How many miles does it travel? Explain step by step."
    explanation = complexity.explain(text, top=1000)
    model = complexity.model()
    assert explanation.score == pytest.approx(complexity.score(text))
    assert sum(v for _, v in explanation.features) == pytest.approx(model.raw(text))
    assert len(complexity.explain(text, top=3).features) == 3


def test_model_file_is_small() -> None:
    assert complexity.MODEL_PATH.stat().st_size < 20 * 1024 * 1024


def test_calibration_is_monotonic_and_spans_0_to_1() -> None:
    model = complexity.model()
    assert np.all(np.diff(model.quantiles) >= 0)
    assert model.calibrate(-1e9) == 0.0 and model.calibrate(1e9) == 1.0


@pytest.mark.skipif(not DEV.exists(), reason=f"labelled data not present at {DEV}")
def test_cross_validated_model_beats_random_and_length_on_held_out_prompts() -> None:
    rows = read_labelled(DEV)[::3]  # a third of the data keeps the test fast
    metrics, _ = cross_validate(rows, k=3)
    length = apgr(
        [len(r["prompt"]) for r in rows],
        [r["weak_correct"] for r in rows],
        [r["strong_correct"] for r in rows],
    )
    assert metrics["apgr"] > 0.55
    assert metrics["apgr"] > length["apgr"] - 0.02


def test_cli_scores_stdin_in_order_and_reports_bad_lines() -> None:
    lines = [
        json.dumps({"prompt": "What is 2+2?", "id": 1}),
        "not json",
        json.dumps({"prompt": "中文"}),
        "[1]",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "complexity"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    records = [json.loads(line) for line in out]
    assert len(records) == 4
    assert records[0]["id"] == 1 and 0 <= records[0]["complexity"] <= 1
    assert "error" in records[1] and "complexity" in records[2] and "error" in records[3]


def test_cli_explain_and_eval(tmp_path: Path) -> None:
    labelled = tmp_path / "l.jsonl"
    labelled.write_text(
        "\n".join(
            json.dumps(
                {"prompt": f"question {i} " * (i + 1), "weak_correct": i % 2 == 0, "strong_correct": True}
            )
            for i in range(20)
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "complexity", "--eval", str(labelled), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    assert {"apgr", "strong_share_for_50pct_gap", "strong_share_for_80pct_gap", "us_per_prompt"} <= set(
        result
    )
    explained = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "complexity", "--explain", "prove it", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 0 <= json.loads(explained)["complexity"] <= 1
