# ruff: noqa: RUF001  (prompts in several scripts: full-width punctuation is intended)
"""The vectorised token ids equal the tokenizer's tokens looked up in the dict, on any text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import complexity
from extproc.complexity.features import Prompt
from extproc.complexity.lexical import encode, prepare, tokens
from extproc.complexity.train import GRADED_TEST, GRADED_TRAIN, read_rows
from tests.complexity.expected_scores import EDGE_CASES

TEXTS = [
    "",
    " ",
    "a",
    "é",
    "aé",
    "éa",
    "abcdefgh",  # 8 bytes: packed
    "abcdefghi",  # 9 bytes: through the dict
    "internationalization and algorithm",  # known long words
    "证明：对任意正整数n，n^5 - n 能被30整除。",
    "lone \ud800 surrogate and emoji 🚀🚀",
    "A-B C.D_e\x00\x7f",
    "x" * 9000,
]


def check(text: str) -> None:
    extractor = complexity.model().extractor
    prepared = prepare(text)
    expected = extractor.ids(tokens(prepared))
    got = extractor.packed_ids(encode(prepared))
    assert got.tolist() == expected.tolist(), text[:80]
    assert extractor.text_ids(prepared, encode(prepared)).tolist() == expected.tolist()


def test_the_same_ids_as_the_tokenizer_on_every_graded_prompt_and_edge_case() -> None:
    rows = read_rows(GRADED_TRAIN) + read_rows(GRADED_TEST)
    texts = (
        TEXTS
        + [Prompt.from_row(r).full_text for r in rows]
        + [Prompt.from_row(c).full_text for c in EDGE_CASES]
    )
    for text in texts:
        check(text)
    # the cases the test is there for: unknown, known short and known long tokens all occur
    ids = complexity.model().extractor.packed_ids(encode(prepare(" ".join(TEXTS))))
    assert (ids == 0).any() and (ids > 0).any()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab9 -\n.é中文证明🚀\ud800ÀZ"), max_size=60))
def test_the_same_ids_as_the_tokenizer_on_any_text(text: str) -> None:
    check(text)
