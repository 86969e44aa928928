# ruff: noqa: RUF001  (prompts in several scripts: full-width punctuation is intended)
"""The C loops (extproc.complexity.native) give the numpy reference's numbers: the same token ids
and cue counts, the same difficulty level and strong_gain (to rounding), on every fixture prompt and
on any text."""

from __future__ import annotations

import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import complexity
from extproc.complexity import native
from extproc.complexity.features import LOG1P_TABLE, Prompt, numbers_before_choices, text_counts
from extproc.complexity.lexical import encode, prepare
from extproc.complexity.scorer import ComplexityModel, level_to_score
from extproc.complexity.train import GRADED_TEST, GRADED_TRAIN, read_rows
from tests.complexity.expected_scores import chinese_2kb_prompts
from tests.complexity.test_difficulty import SIZE_PIECES
from tests.complexity.test_scores_unchanged import expected_rows, prompt_of
from tests.complexity.test_token_ids import TEXTS

# float sums in another order: the last bits may differ, nothing more
ROUNDING = 1e-12


@functools.cache
def reference() -> ComplexityModel:
    return ComplexityModel.load(native=False)


def fixture_prompts() -> list[Prompt]:
    graded = {r["id"]: r for r in read_rows(GRADED_TRAIN) + read_rows(GRADED_TEST)}
    chinese = chinese_2kb_prompts()
    return [prompt_of(row, graded, chinese) for row in expected_rows()] + [Prompt.from_text(t) for t in TEXTS]


def test_the_install_built_the_c_loops_and_the_request_path_uses_them() -> None:
    assert native.available()
    assert complexity.model().scanner is not None
    assert complexity.model().compiled_difficulty is not None
    assert reference().scanner is None


def check(prompt: Prompt) -> None:
    model, numpy_model = complexity.model(), reference()
    scanner, difficulty = model.scanner, model.compiled_difficulty
    assert scanner is not None and difficulty is not None
    extractor = numpy_model.extractor
    prepared = prepare(prompt.final)
    raw = encode(prepared)
    ids = extractor.text_ids(prepared, raw)
    assert scanner.ids(raw) == ids.tolist()
    cues, gain_raw, counts = scanner.scan(raw, True)
    assert cues == extractor.cue_counts(ids)
    assert counts == text_counts(prepared, raw)
    assert gain_raw == pytest.approx(numpy_model.gain.raw_of_ids(ids), rel=ROUNDING, abs=ROUNDING)
    assert math.isnan(scanner.scan(raw, False)[1])
    assert scanner.gain(raw) == gain_raw
    assert scanner.gain(encode(prepare(prompt.full_text))) == pytest.approx(
        numpy_model.gain.raw(prompt.full_text), rel=ROUNDING, abs=ROUNDING
    )
    features = extractor.vector_from(prompt, prepared, ids, raw)
    # exactly: the trees compare them with thresholds
    assert (
        scanner.features(prepared, raw, prompt.turns, prompt.context_tokens, prompt.system_tokens)
        == features.tolist()
    )
    head = numpy_model.difficulty
    level = difficulty.level(features.tolist())
    assert level == pytest.approx(head.level(head.raw(features)), rel=ROUNDING, abs=ROUNDING)
    numbers = numbers_before_choices(prepared)
    assert scanner.numbers(raw) == numbers
    trees = numpy_model.gain_trees
    assert trees is not None
    correction = trees.correction(features, numbers)
    scored = scanner.score(prepared, raw, prompt.turns, prompt.context_tokens, prompt.system_tokens, True)
    assert scored[:2] == (level, gain_raw)
    assert scored[2] == pytest.approx(correction, rel=ROUNDING, abs=ROUNDING)
    got, want = model.scores(prompt), numpy_model.scores(prompt)
    assert got.complexity == pytest.approx(want.complexity, rel=ROUNDING, abs=ROUNDING)
    assert got.strong_gain == pytest.approx(want.strong_gain, rel=ROUNDING, abs=ROUNDING)
    assert got.complexity == level_to_score(level)


def test_the_same_numbers_as_numpy_on_every_fixture_prompt() -> None:
    prompts = fixture_prompts()
    for prompt in prompts:
        check(prompt)
    # what the comparison is there for occurs: cues of several tokens ("show that", "时间复杂度")
    extractor = reference().extractor
    with_longer_cues = 0
    for prompt in prompts:
        prepared = prepare(prompt.final)
        ids = extractor.text_ids(prepared, encode(prepared))
        single_tokens = int((extractor.unigram_group.take(ids) >= 0).sum())
        with_longer_cues += sum(extractor.cue_counts(ids)[: len(extractor.groups)]) > single_tokens
    assert with_longer_cues > 10


# cue words, structure marks and, from the requested-size test, numbers, units and spaces
PIECES = [*"ab9-.éÀZ{_^?？\\`≤ℝ²🚀", "中文", "证明", "\ud800", "prove", " show that ", "time complexity"]
PIECES += ["at least once", "写一个", "时间复杂度", "\n- ", "\n* ", "\n•", "\n\n", "\n1. ", *SIZE_PIECES]
PIECES += ["\n a)", "\n\t7.", "\n²)", "、", "）", ")", "\x1c", "\u2028", "\u00a0"]  # list items, odd spaces
PIECES += ["\nA. ", "\nb) 12", "\n\tc.", "\nz", "3.5", "42", "\nÄ. 7"]  # choice lines and numbers


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_the_same_numbers_as_numpy_on_any_text(text: str) -> None:
    check(Prompt.from_text(text))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_the_same_numbers_as_numpy_on_any_characters(text: str) -> None:
    check(Prompt.from_text(text))


def test_the_same_numbers_as_numpy_when_a_cue_count_is_past_the_log_table() -> None:
    prompt = Prompt.from_text("hi! " * 2000 + "\n1. write 3,000 words\n- and prove it")
    extractor = reference().extractor
    prepared = prepare(prompt.final)
    assert max(extractor.cue_counts(extractor.text_ids(prepared, encode(prepared)))) >= len(LOG1P_TABLE)
    check(prompt)
