"""The request path's inner loops in C (`_native.c`), fed with a loaded model's tables.

One call scores a prompt: a pass over its bytes gives the counts of the structure features, the
token ids, the cue counts and the strong_gain head's raw output, and the difficulty head runs on
the features; only the requested-size regular expression runs in Python, and only where a size
unit follows a number. The numpy code stays the definition (training, `explain`, and installs built
without a C compiler use it); tests/complexity/test_native.py checks that both give the same
numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.complexity.features import (
    ASK_HEAD_TOKENS,
    ASK_TAIL_TOKENS,
    LOG1P_TABLE,
    MATH_SYMBOLS,
    MAX_CUE_TOKENS,
    SIZE_UNIT_STARTS,
    FeatureExtractor,
    log1p_of_counts,
    requested_size,
)
from extproc.complexity.lexical import LexicalModel

try:
    from extproc.complexity._native import Difficulty, Scanner
except ImportError:  # built without a C compiler (setup.py: the extension is optional)
    Difficulty = Scanner = None  # type: ignore[assignment, misc]

__all__ = ["Difficulty", "Scanner", "available", "scanner"]


def available(gain: LexicalModel | None = None) -> bool:
    """Whether the extension was built (and handles `gain`: n-grams up to bigrams, a vocabulary
    of fewer than 65,535 tokens, so that a bigram's key fits 32 bits)."""
    return Scanner is not None and (gain is None or (gain.order <= 2 and len(gain.vocab) + 1 < 65536))


def _array(values: npt.ArrayLike, dtype: type[Any]) -> npt.NDArray[Any]:
    return np.ascontiguousarray(values, dtype=dtype)


def scanner(
    extractor: FeatureExtractor,
    gain: LexicalModel,
    difficulty: Difficulty,
    gain_trees: Difficulty | None = None,
) -> Scanner:
    """The scanner of a model's features and both heads (`available(gain)` must hold; the
    difficulty head compiled by `DifficultyHead.compiled`, the gain trees by `GainTrees.compiled`)."""
    if not available(gain):
        raise RuntimeError("extproc.complexity._native was not built or cannot run this model")
    return Scanner(
        token_index=dict(extractor.token_index),
        base=extractor.base,
        unigram_group=_array(extractor.unigram_group, np.int8),
        starts_ngram=_array(extractor.starts_ngram, np.uint8),
        continues_ngram=_array(extractor.continues_ngram, np.uint8),
        # without the sentinel: the C search is bounded
        ngram_keys=_array(extractor.ngram_keys[:-1], np.int64),
        ngram_group=_array(extractor.ngram_group[:-1], np.int64),
        groups=len(extractor.groups),
        max_cue_tokens=MAX_CUE_TOKENS,
        ask_head=ASK_HEAD_TOKENS,
        ask_tail=ASK_TAIL_TOKENS,
        vocab=len(gain.vocab) + 1,
        order=gain.order,
        unigram_column=_array(gain.unigram_columns(), np.int64),
        gram_keys=_array(gain.keys[gain.unigram_keys :], np.int64),
        idf_weight=_array(gain.idf * gain.weights, np.float64),
        idf_squared=_array(gain.idf * gain.idf, np.float64),
        intercept=gain.intercept,
        math_symbols=MATH_SYMBOLS,
        difficulty=difficulty,
        size_unit=extractor.size_unit,
        log1p_table=_array(LOG1P_TABLE, np.float64),
        # the requested-size regular expression stays in Python, called where a unit follows a number
        size_units=SIZE_UNIT_STARTS,
        requested_size=requested_size,
        log1p_counts=log1p_of_counts,
        gain_trees=gain_trees,
    )
