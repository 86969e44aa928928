from __future__ import annotations

import pytest

from extproc import complexity
from extproc.bench.complexity import PROMPT_BYTES, timing, two_kb_prompts
from extproc.bench.previous_gain import PreviousStrongGain
from extproc.complexity.features import Prompt


def test_two_kb_prompts_are_2_kb_of_whole_characters_from_several_texts() -> None:
    prompts = two_kb_prompts(["短文本", "a short english text", "证明"], 10)
    assert len(prompts) == 10
    for prompt in prompts:
        assert PROMPT_BYTES - 3 <= len(prompt.encode()) <= PROMPT_BYTES
        assert "\n" in prompt  # stitched from several texts


def test_timing_interleaves_the_scorers_in_turns_and_reports_median_and_p99_per_repeat() -> None:
    calls: list[str] = []
    result = timing(
        {"first": lambda t: calls.append("1" + t), "second": lambda t: calls.append("2" + t)},
        ["a", "b"],
        repeats=2,
    )
    assert calls == ["1a", "2a", "2b", "1b"] * 2  # each scorer first as often as the other
    for name in ("first", "second"):
        assert result[name]["prompts"] == 2 and result[name]["repeats"] == 2
        assert len(result[name]["p50_us_per_repeat"]) == 2
        assert 0 < result[name]["p50_us"] <= result[name]["p99_us"]


def test_the_previous_scorer_yardstick_gives_todays_lexical_gain_head() -> None:
    """The frozen copy times the same computation as the head it stands for (same scores): the
    lexical head, which was all of strong_gain before the trees were added."""
    model = complexity.model()
    previous = PreviousStrongGain(model.gain)
    texts = ["", "hi", "Prove that there are infinitely many primes.", "证明：存在无穷多个素数。" * 40]  # noqa: RUF001
    texts += two_kb_prompts(["a short english text about sharding", "短文本", "Find all primes p"], 5)
    # the model without the trees is exactly that head
    lexical_only = complexity.ComplexityModel(model.difficulty, model.gain)
    for text in texts:
        assert previous(text) == pytest.approx(model.gain.score(text), abs=1e-9, rel=0)
        assert previous(text) == pytest.approx(
            lexical_only.scores(Prompt.from_text(text)).strong_gain, abs=1e-9, rel=0
        )
    assert len({previous(t) for t in texts}) > 3  # the texts tell the scores apart
