from __future__ import annotations

from extproc.bench.complexity import PROMPT_BYTES, timing, two_kb_prompts


def test_two_kb_prompts_are_2_kb_of_whole_characters_from_several_texts() -> None:
    prompts = two_kb_prompts(["短文本", "a short english text", "证明"], 10)
    assert len(prompts) == 10
    for prompt in prompts:
        assert PROMPT_BYTES - 3 <= len(prompt.encode()) <= PROMPT_BYTES
        assert "\n" in prompt  # stitched from several texts


def test_timing_reports_median_and_p99_per_repeat() -> None:
    calls: list[str] = []
    result = timing(calls.append, ["a", "b", "c"], repeats=2)
    assert calls == ["a", "b", "c", "a", "b", "c"]
    assert result["prompts"] == 3 and result["repeats"] == 2 and len(result["p50_us_per_repeat"]) == 2
    assert 0 < result["p50_us"] <= result["p99_us"]
