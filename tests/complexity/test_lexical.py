from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import complexity
from extproc.complexity.evaluate import apgr, read_labelled
from extproc.complexity.features import Prompt
from extproc.complexity.lexical import TOKEN, LexicalModel, encode, prepare, tokens
from extproc.complexity.train import cross_validate, cross_validate_bow, documents, fit, gains

DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "routing" / "dev.jsonl"


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
        scores = complexity.scores(text)
        assert 0.0 <= scores.complexity <= 1.0 and 0.0 <= scores.strong_gain <= 1.0
        assert complexity.scores(text) == scores
        assert complexity.score(text) == scores.complexity


def test_gain_explanation_adds_up_to_the_raw_score() -> None:
    text = "A train travels 60 miles per hour for 2.5 hours. How many miles does it travel? Explain step by step."
    model = complexity.model()
    gain = model.gain
    explanation = gain.explain(text, top=1000)
    assert sum(v for _, v in explanation.features) == pytest.approx(gain.raw(text))
    assert len(gain.explain(text, top=3).features) == 3
    # the whole head: the n-grams, the bias and the trees' correction add up to its raw output
    whole = model.explain(Prompt.from_text(text), top=1000)
    trees = [v for name, v in whole.gain_features if name.startswith("trees")]
    names = [name for name, _ in whole.gain_features]
    assert "trees on the difficulty features and 3 numbers in the question" in names and trees[0] != 0.0
    raw = sum(v for _, v in whole.gain_features)
    assert raw == pytest.approx(gain.raw(text) + trees[0])
    assert model.calibrate_gain(raw) == pytest.approx(whole.strong_gain)
    assert whole.strong_gain == pytest.approx(complexity.scores(text).strong_gain)


def test_model_file_is_small_and_holds_both_heads() -> None:
    assert complexity.MODEL_PATH.stat().st_size < 20 * 1024 * 1024
    loaded = complexity.ComplexityModel.load()
    assert len(loaded.gain.keys) == len(loaded.gain.weights) == len(loaded.gain.idf) > 1000
    assert len(loaded.difficulty.weights) == len(loaded.difficulty.names) == len(loaded.extractor.names)
    assert loaded.gain_trees is not None
    assert loaded.gain_trees.trees.feature.max() <= len(loaded.difficulty.names)  # + numbers in the question


def test_gain_calibration_is_monotonic_and_spans_0_to_1() -> None:
    model = complexity.model().gain
    assert np.all(np.diff(model.quantiles) >= 0)
    assert model.calibrate(-1e9) == 0.0 and model.calibrate(1e9) == 1.0


@pytest.mark.skipif(not DEV.exists(), reason=f"labelled data not present at {DEV}")
def test_cross_validated_model_beats_random_length_and_bag_of_words_on_held_out_prompts() -> None:
    rows = read_labelled(DEV)  # ridge CV on all 7.5k rows takes a few seconds
    metrics, held_out = cross_validate(rows, k=5)
    weak = [r["weak_correct"] for r in rows]
    strong = [r["strong_correct"] for r in rows]
    length = apgr([len(r["prompt"]) for r in rows], weak, strong)
    bow = cross_validate_bow(rows, k=5)
    assert len(held_out) == len(rows)
    assert metrics["apgr"] > 0.64  # 0.659 when written
    assert metrics["apgr"] > length["apgr"] + 0.05
    assert metrics["apgr"] > bow["apgr"] + 0.03
    assert metrics["strong_share_for_50pct_gap"] < length["strong_share_for_50pct_gap"]


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text(alphabet="abcXYZ019 .,\n\u00e9\u4e2d\u6587\u00a0\u3000\ud800\u0130\u212a"))
def test_fast_tokenizer_is_the_regex_definition(text: str) -> None:
    prepared = prepare(text)
    assert tokens(prepared) == [encode(t) for t in TOKEN.findall(prepared)]


def test_cjk_text_gets_one_token_per_character() -> None:
    assert tokens(prepare("证明\uff1an^3-n能被6整除 Proof")) == [
        encode(t) for t in ["证", "明", "\uff1a", "n", "3", "n", "能", "被", "6", "整", "除", "proof"]
    ]


def _synthetic_rows(n: int) -> list[dict[str, Any]]:
    """Labelled prompts in English and Chinese where some words and characters predict the gain."""
    rng = np.random.default_rng(7)
    words = ["what", "is", "the", "sum", "prove", "that", "integer", "explain", "why", "a", "b"]
    chars = list("证明整数求和为什么解释三角形面积")
    rows = []
    for _ in range(n):
        picked = rng.choice(words, size=rng.integers(0, 12)).tolist()
        han = "".join(rng.choice(chars, size=rng.integers(0, 15)).tolist())
        prompt = " ".join(picked) + (" " if picked else "") + han + f" {rng.integers(0, 50)}"
        hard = ("prove" in picked) + ("证明" in han) + 0.5 * ("积" in han)
        weak = bool(rng.random() > 0.3 * hard)
        strong = bool(rng.random() > 0.1)
        rows.append({"prompt": prompt, "weak_correct": weak, "strong_correct": strong})
    return rows


def test_numpy_runtime_reproduces_the_sklearn_pipeline(tmp_path: Path) -> None:
    rows = _synthetic_rows(600)
    prompts = [r["prompt"] for r in rows]
    gain = gains(rows)
    fitted = fit(documents(prompts[:400]), gain[:400])
    fitted.export(np.linspace(-0.5, 0.5, 101)).save(tmp_path / "m.npz")
    model = LexicalModel.load(tmp_path / "m.npz")
    probes = [
        *prompts,
        "",
        "   ",
        "never seen words only",
        "PROVE That 证明三角形面积 " * 400,  # longer than HEAD_CHARS + TAIL_CHARS: truncated the same way
        "\ud800 lone surrogate 证",
        "😀" * 50 + " prove",
    ]
    expected = fitted.predict(probes)
    got = np.array([model.raw(p) for p in probes])
    assert np.max(np.abs(expected - got)) < 1e-9
    # Chinese characters are features of their own (and their bigrams), and they move the score.
    explanation = model.explain("证明三角形面积", top=1000)
    names = {name for name, _ in explanation.features}
    assert {"证", "明", "证 明"} <= names
    assert any(abs(v) > 1e-3 for name, v in explanation.features if not name.isascii())
    assert sum(v for _, v in explanation.features) == pytest.approx(model.raw("证明三角形面积"))


def test_shipped_gain_head_sees_words_and_bigrams() -> None:
    explanation = complexity.model().gain.explain(
        "How many miles does the train travel? Explain step by step.", top=1000
    )
    names = {name for name, _ in explanation.features}
    assert "bias" in names and "how many" in names and "step" in names


@pytest.mark.parametrize(
    "text",
    [
        "mostly ascii with a café and one 中 character " * 3,  # few non-ASCII bytes: spaced out
        "证明" * 40 + " abc123 déjà-vu " + "\u3000\u00a0x" * 5,  # many: chunk by chunk
        "x" * 3000 + "é",
    ],
)
def test_both_tokenizer_paths_are_the_regex_definition(text: str) -> None:
    prepared = prepare(text)
    assert tokens(prepared) == [encode(t) for t in TOKEN.findall(prepared)]
