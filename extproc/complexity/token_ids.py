"""Token ids of a prepared text with a few whole-array numpy steps, not a Python call per token:
faster than the tokenizer and a dict when most tokens are single characters (CJK text).

The same ids as `[index.get(t, 0) for t in lexical.tokens(text)]`: tokens are maximal runs of
[a-z0-9] and single UTF-8 characters (a lead byte and its continuation bytes) of the text's bytes
once other ASCII is a separator. Every token of at most 8 bytes (all non-ASCII characters, most
words) is its bytes as one little-endian integer — exact, as a token has no zero byte — and is
looked up by a search in the sorted known ones; longer tokens go through the dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

PACKED_BYTES = 8
# byte classes: 0 separator (ASCII other than [a-z0-9]), 1 [a-z0-9], 2 UTF-8 lead byte, 3 continuation
_SEPARATOR, _WORD, _LEAD, _CONTINUATION = 0, 1, 2, 3
_CLASS = np.zeros(256, dtype=np.int8)
_CLASS[list(b"abcdefghijklmnopqrstuvwxyz0123456789")] = _WORD
_CLASS[0xC0:] = _LEAD
_CLASS[0x80:0xC0] = _CONTINUATION


class TokenIds:
    """Immutable after construction: the packed known tokens and the dict for the long ones."""

    def __init__(self, index: Mapping[bytes, int]) -> None:
        self.index = index
        short = sorted(
            (int.from_bytes(t, "little"), i) for t, i in index.items() if 0 < len(t) <= PACKED_BYTES
        )
        # a last key no token packs to (8 bytes of 0xff: no UTF-8 text has that byte), so a search
        # never runs past the end; it maps to 0, unknown
        self.keys = np.array([k for k, _ in short] + [2**64 - 1], dtype=np.uint64)
        self.ids = np.array([i for _, i in short] + [0], dtype=np.int64)
        self._window = np.arange(PACKED_BYTES)
        self._false = np.zeros(1, dtype=bool)
        self._masks = np.array([(1 << (8 * n)) - 1 for n in range(PACKED_BYTES + 1)], dtype=np.uint64)
        self._padding = bytes(PACKED_BYTES)

    def __call__(self, raw: bytes) -> IntArray:
        """The ids of the tokens of `raw`, a prepared text's UTF-8 bytes (`lexical.encode`)."""
        if not raw:
            return np.zeros(0, dtype=np.int64)
        data = np.frombuffer(raw + self._padding, dtype=np.uint8)
        kind = _CLASS.take(data)  # the padding is separator
        word = kind == _WORD
        # a token starts at every lead byte and at a word byte not after a word byte, and ends
        # before the next start or separator
        starts_here = (kind == _LEAD) | (word & ~np.concatenate((self._false, word[:-1])))
        starts = starts_here.nonzero()[0]
        if not starts.size:
            return np.zeros(0, dtype=np.int64)
        stops = (starts_here | (kind == _SEPARATOR)).nonzero()[0]
        lengths = stops[stops.searchsorted(starts, side="right")] - starts
        # each token's first 8 bytes read as one integer, the bytes past its end masked off
        packed = data[starts[:, None] + self._window].view("<u8").ravel()
        packed &= self._masks.take(np.minimum(lengths, PACKED_BYTES))
        # searched in order (a third faster: neighbouring keys share cache lines), then put back
        order = packed.argsort()
        packed = packed[order]
        where = self.keys.searchsorted(packed)
        ids = np.empty(len(order), dtype=np.int64)
        ids[order] = np.where(self.keys.take(where) == packed, self.ids.take(where), 0)
        long_tokens = (lengths > PACKED_BYTES).nonzero()[0]
        if long_tokens.size:
            get = self.index.get
            for t, start, length in zip(
                long_tokens.tolist(), starts[long_tokens].tolist(), lengths[long_tokens].tolist(), strict=True
            ):
                ids[t] = get(raw[start : start + length], 0)
        return ids
