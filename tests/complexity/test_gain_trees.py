"""The strong_gain head's trees: the numbers-in-the-question input, the model file without them, the
export, and stacking that never lets a row's own label reach its held-out score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extproc import complexity
from extproc.complexity.features import Prompt, numbers_before_choices
from extproc.complexity.lexical import prepare
from extproc.complexity.scorer import ComplexityModel
from extproc.complexity.train import (
    GAIN_TREES,
    documents,
    export_trees,
    fit_gain_trees,
    gain_tree_inputs,
    stacked_cross_validate,
)


def numbers(text: str) -> int:
    return numbers_before_choices(prepare(text))


def test_numbers_are_counted_in_the_question_not_in_the_choices() -> None:
    assert numbers("What is 12 + 7?\nA. 19\nB. 20\nC. 21\nD. 22\nAnswer:") == 2
    assert numbers("Janet has 16 eggs, eats 3 and sells the rest for $2 each.") == 3
    assert numbers("2.5 hours, 1,000 miles") == 4  # runs of digits
    assert numbers("Which year?\n  b) 1066\n  c) 1215") == 0
    assert numbers("Given 4 cases:\n\tc) 5") == 1
    # a line starting with a non-ASCII letter, a digit or a word is no choice
    assert numbers("4\nä. 5\n3) 7\nan 8") == 5
    assert numbers("٣ and 3") == 1  # ASCII digits only
    assert numbers("") == 0


def test_a_model_file_without_gain_trees_scores_with_the_lexical_head_alone(tmp_path: Path) -> None:
    shipped = complexity.model()
    lexical_only = ComplexityModel(shipped.difficulty, shipped.gain)
    lexical_only.save(tmp_path / "m.npz")
    reloaded = ComplexityModel.load(tmp_path / "m.npz")
    assert reloaded.gain_trees is None
    for text in ("hi", "A train travels 60 miles per hour for 2.5 hours. How far does it go?"):
        scores = reloaded.scores(Prompt.from_text(text))
        assert scores.strong_gain == pytest.approx(shipped.gain.score(text), abs=1e-12)
        assert scores.complexity == shipped.scores(Prompt.from_text(text)).complexity
    # the shipped trees move the score of a computation-heavy question
    text = "A store sells 3 apples for $2 and 5 pears for $4. How much do 12 apples and 10 pears cost?"
    assert shipped.strong_gain(text) != pytest.approx(shipped.gain.score(text), abs=1e-3)


def test_exported_gain_trees_reproduce_scikit_learn() -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(400, 62))
    inputs[:, -1] = rng.integers(0, 9, size=400)  # a count, as numbers_before_choices is
    residual = np.sin(inputs[:, 0]) + 0.3 * inputs[:, -1] + rng.normal(scale=0.5, size=400)
    boosted = ensemble.GradientBoostingRegressor(random_state=0, **GAIN_TREES).fit(inputs, residual)
    probes = np.vstack([inputs, inputs * 1.7 - 0.2])
    exported = export_trees(boosted)
    got = np.array([exported.predict(row) for row in probes])
    assert np.max(np.abs(got - boosted.predict(probes))) < 1e-9
    assert fit_gain_trees(inputs, residual).predict(probes[0]) == pytest.approx(got[0], abs=1e-12)


def test_a_rows_own_label_never_reaches_its_held_out_score() -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(2)
    words = ["apples", "pears", "train", "miles", "prove", "theorem", "cost", "hours", "law", "cell"]
    prompts = [
        " ".join(rng.choice(words, size=8))
        + f" {rng.integers(1, 99)} and {rng.integers(1, 9)}?"
        + ("\nA. 1\nB. 2" if i % 3 else "")
        for i in range(240)
    ]
    docs = documents(prompts)
    inputs = gain_tree_inputs(prompts)
    gain = rng.choice([-1.0, 0.0, 1.0], size=len(prompts))
    fold = np.arange(len(prompts)) % 4
    held_out = stacked_cross_validate(prompts, docs, gain, inputs, fold)
    changed = gain.copy()
    changed[fold == 0] = -changed[fold == 0] + 0.5  # other labels in the held-out fold only
    again = stacked_cross_validate(prompts, docs, changed, inputs, fold)
    assert np.array_equal(held_out[fold == 0], again[fold == 0])
    assert not np.allclose(held_out[fold != 0], again[fold != 0])  # which those labels did train
