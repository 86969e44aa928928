"""The request path's inner loops in C (`_native.c`), fed with a loaded model's tables.

One pass over a prompt's bytes gives the token ids, the cue counts and the strong_gain head's raw
output, and the difficulty head runs on the feature list without a numpy call: about a third of
the numpy scorer's time on a 2 KB prompt. The numpy code stays the definition (training,
`explain`, and installs built without a C compiler use it); tests/complexity/test_native.py
checks that both give the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from extproc.complexity.features import ASK_HEAD_TOKENS, ASK_TAIL_TOKENS, MAX_CUE_TOKENS, FeatureExtractor
from extproc.complexity.lexical import LexicalModel

if TYPE_CHECKING:
    from extproc.complexity.scorer import DifficultyHead

try:
    from extproc.complexity import _native
except ImportError:  # built without a C compiler (the extension is optional in pyproject.toml)
    _native = None  # type: ignore[assignment]


def available() -> bool:
    return _native is not None


class NativeScorer:
    """Immutable after construction, like the model it copies its tables from."""

    def __init__(self, extractor: FeatureExtractor, gain: LexicalModel, difficulty: DifficultyHead) -> None:
        if _native is None:
            raise RuntimeError("extproc.complexity._native was not built")
        int64 = np.int64
        self.scanner = _native.Scanner(
            token_index=dict(extractor.token_index),
            base=extractor.base,
            unigram_group=np.ascontiguousarray(extractor.unigram_group, dtype=np.int8),
            starts_ngram=np.ascontiguousarray(extractor.starts_ngram, dtype=np.uint8),
            continues_ngram=np.ascontiguousarray(extractor.continues_ngram, dtype=np.uint8),
            # without the sentinel: the C search is bounded
            ngram_keys=np.ascontiguousarray(extractor.ngram_keys[:-1], dtype=int64),
            ngram_group=np.ascontiguousarray(extractor.ngram_group[:-1], dtype=int64),
            groups=len(extractor.groups),
            max_cue_tokens=MAX_CUE_TOKENS,
            ask_head=ASK_HEAD_TOKENS,
            ask_tail=ASK_TAIL_TOKENS,
            vocab=len(gain.vocab) + 1,
            order=gain.order,
            unigram_column=np.ascontiguousarray(gain.unigram_columns(), dtype=int64),
            gram_keys=np.ascontiguousarray(gain.keys[gain.unigram_keys :], dtype=int64),
            idf_weight=np.ascontiguousarray(gain.idf * gain.weights, dtype=np.float64),
            idf_squared=np.ascontiguousarray(gain.idf * gain.idf, dtype=np.float64),
            intercept=gain.intercept,
        )
        trees = difficulty.trees
        a, b = difficulty.calibration
        self.difficulty = _native.Difficulty(
            weights=np.ascontiguousarray(difficulty.weights, dtype=np.float64),
            intercept=difficulty.intercept,
            blend=difficulty.blend,
            a=a,
            b=b,
            feature=np.ascontiguousarray(trees.feature, dtype=int64),
            threshold=np.ascontiguousarray(trees.threshold, dtype=np.float64),
            value=np.ascontiguousarray(trees.value, dtype=np.float64),
            trees=trees.feature.shape[0],
            init=trees.init,
            rate=trees.rate,
        )
