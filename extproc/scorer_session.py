"""Scorer: keep a session (x-user-id or the configured key) on one replica, with bounded load.

Rendezvous hashing ranks every candidate for the key; the session goes to the highest-ranked
candidate whose load is under ``session_load_factor`` x the average (plus one), so one hot
user cannot overload a replica and the mapping barely moves when endpoints come and go.
"""

from __future__ import annotations

import zlib
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from extproc.fleet import FleetSnapshot, FloatArray
from extproc.outlier import OutlierDetector
from extproc.picker import PickView, SchedulerConfig, register

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64 finaliser, vectorised: good avalanche so ranks are independent per key."""
    x = values.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x & _MASK


class SessionScorer:
    name: ClassVar[str] = "session"

    def __init__(self, load_factor: float) -> None:
        self.load_factor = load_factor
        self._seeds: tuple[tuple[str, ...], npt.NDArray[np.uint64]] | None = None

    def _endpoint_seeds(self, snapshot: FleetSnapshot) -> npt.NDArray[np.uint64]:
        if self._seeds is None or self._seeds[0] is not snapshot.membership:
            seeds = np.array(
                [zlib.crc32(a.encode()) * 0x9E3779B1 for a in snapshot.membership], dtype=np.uint64
            )
            self._seeds = (snapshot.membership, seeds)
        return self._seeds[1]

    def preferred(self, view: PickView, key: str) -> int | None:
        """Index into the view of the replica this key belongs on, or None."""
        if view.size == 0:
            return None
        key_hash = np.uint64(zlib.crc32(key.encode()) | (zlib.adler32(key.encode()) << 32))
        ranks = _mix(self._endpoint_seeds(view.snapshot)[view.rows] ^ key_hash)
        load = np.maximum(view.snapshot.waiting[view.rows] + view.snapshot.running[view.rows], view.inflight)
        bound = self.load_factor * float(load.mean()) + 1.0
        # The highest-ranked candidate under the load bound: one linear pass, no sort.
        eligible = load <= bound
        if not eligible.any():
            return None
        return int(np.where(eligible, ranks, np.uint64(0)).argmax())

    def score(self, view: PickView) -> FloatArray:
        scores = np.zeros(view.size)
        key = view.ctx.session_key
        if key:
            best = self.preferred(view, key)
            if best is not None:
                scores[best] = 1.0
        return scores

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


@register(SessionScorer.name)
def _make(config: SchedulerConfig, _outliers: OutlierDetector) -> SessionScorer:
    return SessionScorer(config.session_load_factor)
