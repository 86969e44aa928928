from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from extproc.complexity.features import TextCounts

class Scanner:
    def __init__(
        self,
        *,
        token_index: dict[bytes, int],
        base: int,
        unigram_group: npt.NDArray[np.int8],
        starts_ngram: npt.NDArray[np.uint8],
        continues_ngram: npt.NDArray[np.uint8],
        ngram_keys: npt.NDArray[np.int64],
        ngram_group: npt.NDArray[np.int64],
        groups: int,
        max_cue_tokens: int,
        ask_head: int,
        ask_tail: int,
        vocab: int,
        order: int,
        unigram_column: npt.NDArray[np.int64],
        gram_keys: npt.NDArray[np.int64],
        idf_weight: npt.NDArray[np.float64],
        idf_squared: npt.NDArray[np.float64],
        intercept: float,
        math_symbols: str,
        difficulty: Difficulty,
        size_unit: int,
        log1p_table: npt.NDArray[np.float64],
        size_units: Sequence[str],
        requested_size: Callable[[str], float],
        log1p_counts: Callable[[list[int]], list[float]],
        gain_trees: Difficulty | None = None,
    ) -> None: ...
    def features(
        self, text: str, raw: bytes, turns: float, context_tokens: float, system_tokens: float, /
    ) -> list[float]: ...
    def score(
        self,
        text: str,
        raw: bytes,
        turns: float,
        context_tokens: float,
        system_tokens: float,
        with_gain: bool,
        /,
    ) -> tuple[float, float, float]: ...
    def scan(self, raw: bytes, with_gain: bool, /) -> tuple[list[int], float, TextCounts]: ...
    def gain(self, raw: bytes, /) -> float: ...
    def ids(self, raw: bytes, /) -> list[int]: ...
    def numbers(self, raw: bytes, /) -> int: ...

class Difficulty:
    def __init__(
        self,
        *,
        weights: npt.NDArray[np.float64],
        intercept: float,
        blend: float,
        a: float,
        b: float,
        feature: npt.NDArray[np.int64],
        threshold: npt.NDArray[np.float64],
        value: npt.NDArray[np.float64],
        trees: int,
        init: float,
        rate: float,
    ) -> None: ...
    def level(self, features: Sequence[float], /) -> float: ...
