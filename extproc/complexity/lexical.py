"""The lexical head: how much a prompt gains from the strong model, from its words (``strong_gain``).

Ridge regression on TF-IDF word 1-2grams (trained with scikit-learn by `extproc.complexity.train`
on prompts labelled with whether a weak and a strong model answered correctly; run here with numpy
only). Tokens are ASCII words/numbers and single non-ASCII characters (so Chinese and other scripts
without spaces still yield features). The ridge output is calibrated to its percentile among
held-out (cross-validated) training scores, so `strong_gain > 0.7` means "more to gain than 70 % of
the calibration prompts". No I/O after the model file is loaded once.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Bounded work for huge prompts: the start (instructions, question) and the end (the ask).
HEAD_CHARS = 4096
TAIL_CHARS = 1024

Ints = npt.NDArray[np.signedinteger[Any]]  # int32 or int64

# The tokenizer, by definition: this regex over the prepared (lower-cased) text, each token as
# UTF-8 bytes. `tokens` computes the same thing faster; training and run time both use `tokens`.
TOKEN = re.compile(r"[a-z0-9]+|[^\x00-\x7f]")
# ASCII other than [a-z0-9] becomes a space; bytes of non-ASCII characters are kept.
_SEPARATE = bytes(b if (0x30 <= b <= 0x39 or 0x61 <= b <= 0x7A or b >= 0x80) else 0x20 for b in range(256))
# Inside a chunk with non-ASCII bytes: ASCII words, and one UTF-8 sequence (lead byte and its
# continuation bytes) per non-ASCII character.
_MIXED = re.compile(rb"[a-z0-9]+|[\xc0-\xff][\x80-\xbf]*")
NGRAM_SEP = b" "
_NON_ASCII = bytes(range(0x80, 0x100))
_NON_ASCII_CHAR = re.compile(rb"([\xc0-\xff][\x80-\xbf]*)")
# Up to this many non-ASCII bytes (a few accented or CJK characters in English text), spacing them
# out is faster than visiting every chunk; beyond, the per-chunk loop is.
_FEW_NON_ASCII_BYTES = 64


def prepare(text: str) -> str:
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    return text.lower()


def encode(text: str) -> bytes:
    # "surrogatepass": any Python str (lone surrogates too) has a byte form.
    return text.encode("utf-8", "surrogatepass")


def tokens(text: str) -> list[bytes]:
    """`TOKEN.findall(text)`, UTF-8 encoded (text already prepared)."""
    data = encode(text).translate(_SEPARATE)
    if text.isascii():
        return data.split()
    non_ascii = len(data) - len(data.translate(None, _NON_ASCII))
    if non_ascii <= _FEW_NON_ASCII_BYTES:
        # mostly ASCII: space out the few non-ASCII characters, then one split
        return _NON_ASCII_CHAR.sub(rb" \1 ", data).split()
    if 2 * non_ascii > len(data):
        # mostly non-ASCII (CJK): one pass over the whole buffer beats a call per chunk
        return _MIXED.findall(data)
    chunks = data.split()
    out: list[bytes] = []
    for chunk in chunks:
        if chunk.isascii():
            out.append(chunk)
        else:
            out += _MIXED.findall(chunk)
    return out


def ngrams(toks: list[bytes], order: int) -> list[bytes]:
    """Word n-grams of length 1..order, tokens joined by a space (which no token contains)."""
    return [NGRAM_SEP.join(toks[i : i + n]) for n in range(1, order + 1) for i in range(len(toks) - n + 1)]


@dataclass(frozen=True)
class LexicalExplanation:
    score: float
    raw: float
    features: list[tuple[str, float]]  # (n-gram or "bias", contribution to the raw score), largest first


def interpolate(raw: float, xs: list[float], ys: list[float]) -> float:
    """`np.interp(raw, xs, ys)`, on lists (a numpy call costs more for one value)."""
    if raw < xs[0]:
        return ys[0]
    if raw > xs[-1]:
        return ys[-1]
    if math.isnan(raw):
        return math.nan
    j = bisect_right(xs, raw) - 1
    if j == len(xs) - 1 or xs[j] == raw:
        return ys[j]
    slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
    return slope * (raw - xs[j]) + ys[j]


class LexicalModel:
    """raw(text) = intercept + Σ weight[j]·x[j], x = L2-normalised (1 + log count)·idf over n-grams.

    The n-gram of column j is identified by `keys[j]` (ascending): token ids t1..tn (1-based
    positions in `vocab`, 0 = unknown token) packed as Σ t_i·V^(n-i) + (n-1)·V^order, V = len(vocab) + 1.
    """

    def __init__(
        self,
        vocab: list[bytes],
        keys: npt.NDArray[np.int64],
        idf: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
        intercept: float,
        order: int,
        quantiles: npt.NDArray[np.float64],
    ) -> None:
        if keys.size and not np.all(np.diff(keys) > 0):
            raise ValueError("n-gram keys must be strictly increasing")
        self.vocab = vocab
        self.token_ids = {t: i + 1 for i, t in enumerate(vocab)}
        self.keys = keys
        self.idf = idf
        self.weights = weights
        self.intercept = intercept
        self.order = order
        self.quantiles = quantiles
        self._v = len(vocab) + 1
        if order * self._v**order >= 2**63:
            raise ValueError("vocabulary too large for 64-bit n-gram keys")
        self._offsets = [np.int64((n - 1) * self._v**order) for n in range(1, order + 1)]
        self._levels = np.linspace(0.0, 1.0, len(quantiles))
        self._true = np.ones(1, dtype=bool)
        # Half the memory to search (it is the cost: random reads of a large array) when keys fit.
        self._key_type = np.int32 if order * self._v**order < 2**31 else np.int64
        self._search_keys = keys.astype(self._key_type)
        self._search_offsets = [self._key_type(offset) for offset in self._offsets]
        # unigram keys are token ids (0 to V - 1): their columns by table, the rest by search
        self._unigrams = int(np.searchsorted(keys, self._v))
        # small tables, as they are read at random: fewer cache misses (int32: columns < 2**31)
        self._unigram_column: Ints = np.full(self._v, -1, dtype=np.int32 if len(keys) < 2**31 else np.int64)
        self._unigram_column[keys[: self._unigrams]] = np.arange(self._unigrams)
        # and a last key no n-gram packs to, so a search never runs past the end
        last = np.array([np.iinfo(self._key_type).max], dtype=self._key_type)
        self._longer_keys = np.concatenate((self._search_keys[self._unigrams :], last))
        # raw = Σ tf·idf·w / sqrt(Σ (tf·idf)²) with tf = 1 + log count: idf·w and idf² once, here
        self._idf_weight = idf * weights
        self._idf_squared = idf * idf
        self._quantile_list: list[float] = quantiles.tolist()
        self._level_list: list[float] = self._levels.tolist()

    @property
    def unigram_keys(self) -> int:
        """How many of `keys` are unigrams (they come first)."""
        return self._unigrams

    def unigram_columns(self) -> Ints:
        """Per token id, the column of its unigram (-1: none)."""
        return self._unigram_column

    @classmethod
    def from_arrays(cls, data: Mapping[str, npt.NDArray[Any]], prefix: str = "") -> LexicalModel:
        vocab = bytes(data[prefix + "vocab"]).split(b"\n") if data[prefix + "vocab"].size else []
        return cls(
            vocab,
            data[prefix + "keys"].astype(np.int64),
            data[prefix + "idf"].astype(np.float64),
            data[prefix + "weights"].astype(np.float64),
            float(data[prefix + "intercept"]),
            int(data[prefix + "order"]),
            data[prefix + "quantiles"].astype(np.float64),
        )

    def arrays(self, prefix: str = "") -> dict[str, Any]:
        return {
            prefix + "vocab": np.frombuffer(b"\n".join(self.vocab), dtype=np.uint8),
            prefix + "keys": self.keys,
            prefix + "idf": self.idf,
            prefix + "weights": self.weights,
            prefix + "intercept": np.array(self.intercept, dtype=np.float64),
            prefix + "order": np.array(self.order, dtype=np.int64),
            prefix + "quantiles": self.quantiles,
        }

    @classmethod
    def load(cls, path: Path, prefix: str = "") -> LexicalModel:
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays(data, prefix)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **self.arrays())

    def key(self, ngram: bytes) -> int | None:
        """The key of an n-gram (None if one of its tokens is not in the vocabulary)."""
        parts = ngram.split(NGRAM_SEP)
        value = 0
        for part in parts:
            token_id = self.token_ids.get(part)
            if token_id is None:
                return None
            value = value * self._v + token_id
        return value + int(self._offsets[len(parts) - 1])

    def ngram(self, key: int) -> bytes:
        n = next(n for n in range(self.order, 0, -1) if key >= self._offsets[n - 1])
        key -= int(self._offsets[n - 1])
        parts = []
        for _ in range(n):
            key, token_id = divmod(key, self._v)
            parts.append(self.vocab[token_id - 1])
        return NGRAM_SEP.join(reversed(parts))

    def token_id_array(self, toks: list[bytes]) -> npt.NDArray[np.int64]:
        return np.fromiter(map(self.token_ids.get, toks, repeat(0)), dtype=np.int64, count=len(toks))

    def columns(self, text: str) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """The model's columns present in the text, and their TF-IDF values (not yet normalised)."""
        return self.columns_of_ids(self.token_id_array(tokens(prepare(text))))

    def columns_of_ids(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """As `columns`, from the text's token ids (0 or anything past the vocabulary: unknown)."""
        if not ids.size:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        if ids.max() >= self._v:
            ids = np.where(ids < self._v, ids, 0)
        return self._columns_of_known_ids(ids)

    def _columns_of_known_ids(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """`columns_of_ids` for non-empty ids all in the vocabulary's range (0 = unknown)."""
        cols, counts = self._column_counts(ids)
        return cols, (1.0 + np.log(counts)) * self.idf[cols]

    def _column_counts(self, ids: Ints) -> tuple[Ints, Ints]:
        """The columns present (ascending) and how often each is (ids as in `_columns_of_known_ids`)."""
        if not self.keys.size:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
        # A unigram's column is a table lookup; longer n-grams are searched (sorted, so equal
        # ones sit together), then the known ones are counted: cheaper than de-duplicating first,
        # as most n-grams of a prompt are unknown or unique. Unigram keys sort before all others.
        hits = self._unigram_column.take(ids)
        hits = hits[hits >= 0]
        hits.sort()
        if self.order > 1 and len(ids) > 1:
            ids = ids.astype(self._key_type)
            parts = []
            packed = ids
            for n in range(2, min(self.order, len(ids)) + 1):
                packed = packed[:-1] * self._v + ids[n - 1 :]
                parts.append(packed + self._search_offsets[n - 1])
            found = np.concatenate(parts) if len(parts) > 1 else parts[0]
            found.sort()
            keys = self._longer_keys
            if keys.size > 1:
                where = keys.searchsorted(found)
                hits = np.concatenate((hits, where[keys[where] == found] + self._unigrams))
        if not hits.size:
            return hits, hits
        # ndarray methods, not the np.* functions: those add Python wrapper calls on every use
        starts = np.concatenate((self._true, hits[1:] != hits[:-1])).nonzero()[0]
        counts = np.concatenate((starts[1:], (hits.size,))) - starts
        return hits[starts], counts

    def raw(self, text: str) -> float:
        return self.raw_of_columns(*self.columns(text))

    def raw_of_ids(self, ids: npt.NDArray[np.int64]) -> float:
        return self.raw_of_columns(*self.columns_of_ids(ids))

    def raw_of_known_ids(self, ids: Ints) -> float:
        """`raw_of_ids` for ids all below len(vocab) + 1 (the request path: fewer numpy calls)."""
        if not ids.size:
            return self.intercept
        cols, counts = self._column_counts(ids)
        if not cols.size:
            return self.intercept
        tf = np.log(counts)
        tf += 1.0
        return float(tf @ self._idf_weight[cols]) / math.sqrt(float((tf * tf) @ self._idf_squared[cols])) + (
            self.intercept
        )

    def raw_of_columns(self, cols: npt.NDArray[np.intp], values: npt.NDArray[np.float64]) -> float:
        if not cols.size:
            return self.intercept
        return float(values @ self.weights[cols]) / math.sqrt(float(values @ values)) + self.intercept

    def calibrate(self, raw: float) -> float:
        return interpolate(raw, self._quantile_list, self._level_list)

    def score(self, text: str) -> float:
        return self.calibrate(self.raw(text))

    def explain(self, text: str, top: int = 8) -> LexicalExplanation:
        cols, values = self.columns(text)
        contributions = [("bias", self.intercept)]
        if cols.size:
            parts = values * self.weights[cols] / math.sqrt(float(values @ values))
            contributions += [
                (self.ngram(int(self.keys[c])).decode("utf-8", "surrogatepass"), float(v))
                for c, v in zip(cols, parts, strict=True)
            ]
        raw = math.fsum(v for _, v in contributions)
        contributions.sort(key=lambda item: -abs(item[1]))
        return LexicalExplanation(self.calibrate(raw), raw, contributions[:top])
