"""The request path's scores equal those of the straightforward numpy scorer the shipped model was
built with (tests/complexity/data/expected_scores.jsonl, written by tests.complexity.expected_scores
before the scorer was made faster): a faster scorer must not move any score."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc import complexity
from extproc.complexity.features import Prompt
from extproc.complexity.train import GRADED_TEST, GRADED_TRAIN, read_rows
from tests.complexity.expected_scores import EDGE_CASES, FIXTURE, chinese_2kb_prompts

TOLERANCE = 1e-9


def expected_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text().split("\n") if line]


def prompt_of(row: dict[str, Any], graded: dict[str, dict[str, Any]], chinese: list[str]) -> Prompt:
    kind = row["set"]
    if kind in ("graded_train", "graded_test"):
        return Prompt.from_row(graded[row["id"]])
    if kind == "2kb_zh":
        return Prompt.from_text(chinese[row["index"]])
    if kind == "edge":
        return Prompt.from_row(EDGE_CASES[row["index"]])
    return Prompt.from_text(row["prompt"])


def test_the_fixture_covers_every_graded_row_and_each_kind_of_prompt() -> None:
    rows = expected_rows()
    kinds = {row["set"] for row in rows}
    assert kinds == {"graded_train", "graded_test", "routing", "2kb", "2kb_zh", "edge"}
    graded_ids = {row["id"] for row in rows if row["set"].startswith("graded")}
    assert graded_ids == {r["id"] for r in read_rows(GRADED_TRAIN) + read_rows(GRADED_TEST)}
    assert sum(row["set"] == "edge" for row in rows) == len(EDGE_CASES)


@pytest.mark.parametrize("kind", ["graded_train", "graded_test", "routing", "2kb", "2kb_zh", "edge"])
def test_scores_equal_the_reference_scorer(kind: str) -> None:
    graded = {r["id"]: r for r in read_rows(GRADED_TRAIN) + read_rows(GRADED_TEST)}
    chinese = chinese_2kb_prompts()
    rows = [row for row in expected_rows() if row["set"] == kind]
    assert rows
    model = complexity.model()
    for row in rows:
        prompt = prompt_of(row, graded, chinese)
        scores = model.scores(prompt)
        assert scores.complexity == pytest.approx(row["complexity"], abs=TOLERANCE, rel=0), row
        assert scores.strong_gain == pytest.approx(row["strong_gain"], abs=TOLERANCE, rel=0), row
        # the plain-text entry points agree with the structured one
        if prompt.text is None and prompt.context_tokens == 0.0 and prompt.system_tokens == 0.0:
            assert model.score(prompt.final) == scores.complexity
