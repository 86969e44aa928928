"""A yardstick for the complexity speed benchmark: the strong_gain head alone exactly as it ran
before the request path was made faster (commit 722859b), frozen here so that later speed work on
`extproc.complexity` does not move it.

Timed interleaved with the current scorer in one run, it turns a ratio measured on a loaded machine
into a comparison that holds across runs. (It is not the single-head scorer of commit bf9d4a5, the
one measured at 71 µs on an idle machine: that one, in one run with it, took about 1.27x its time on
English 2 KB prompts and 1.08x on Chinese.) It reads the model's arrays and gives the same scores.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from extproc.complexity.lexical import LexicalModel, prepare, tokens


class PreviousStrongGain:
    def __init__(self, gain: LexicalModel) -> None:
        self.gain = gain
        self.v = len(gain.vocab) + 1
        self.key_type = np.int32 if gain.order * self.v**gain.order < 2**31 else np.int64
        self.offsets = [self.key_type((n - 1) * self.v**gain.order) for n in range(1, gain.order + 1)]
        self.unigrams = int(np.searchsorted(gain.keys, self.v))
        self.unigram_column = np.full(self.v, -1, dtype=np.int64)
        self.unigram_column[gain.keys[: self.unigrams]] = np.arange(self.unigrams)
        self.longer_keys = gain.keys.astype(self.key_type)[self.unigrams :]
        self.levels = np.linspace(0.0, 1.0, len(gain.quantiles))
        self.true = np.ones(1, dtype=bool)

    def __call__(self, text: str) -> float:
        """`strong_gain` of a plain-text prompt."""
        gain = self.gain
        ids = gain.token_id_array(tokens(prepare(text)))
        cols, values = self.columns(ids)
        raw = gain.intercept
        if cols.size:
            raw += float(values @ gain.weights[cols]) / math.sqrt(float(values @ values))
        return float(np.interp(raw, gain.quantiles, self.levels))

    def columns(self, ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        if not ids.size or not self.gain.keys.size:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        if ids.max() >= self.v:
            ids = np.where(ids < self.v, ids, 0)
        hits = self.unigram_column[ids]
        hits = hits[hits >= 0]
        hits.sort()
        if self.gain.order > 1 and len(ids) > 1:
            ids = ids.astype(self.key_type)
            parts = []
            packed = ids
            for n in range(2, min(self.gain.order, len(ids)) + 1):
                packed = packed[:-1] * self.v + ids[n - 1 :]
                parts.append(packed + self.offsets[n - 1])
            found = np.concatenate(parts) if len(parts) > 1 else parts[0]
            found.sort()
            keys = self.longer_keys
            if keys.size:
                where = np.searchsorted(keys, found)
                np.minimum(where, len(keys) - 1, out=where)
                hits = np.concatenate((hits, where[keys[where] == found] + self.unigrams))
        if not hits.size:
            return hits, np.zeros(0)
        starts = np.flatnonzero(np.concatenate((self.true, hits[1:] != hits[:-1])))
        counts = np.diff(np.append(starts, hits.size))
        cols = hits[starts]
        return cols, (1.0 + np.log(counts)) * self.gain.idf[cols]
