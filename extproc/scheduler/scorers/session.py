"""Scorer: keep a session (x-user-id or the configured key) on one replica, with bounded load.

Rendezvous hashing ranks every candidate for the key; the session goes to the highest-ranked
candidate whose load is under ``session_load_factor`` x the average (plus one), so one hot
user cannot overload a replica and the mapping barely moves when endpoints come and go.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from extproc.fleet.state import FleetSnapshot, IntArray
from extproc.scheduler.framework import PickView, PluginContext, PluginType, Sparse

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_BEST_KEPT = 8  # ranked candidates remembered per key; beyond them the bound is rarely reached


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
    per_request: ClassVar[bool] = True

    def __init__(self, load_factor: float, remembered_keys: int = 10_000) -> None:
        self.load_factor = load_factor
        self._seeds: tuple[tuple[str, ...], npt.NDArray[np.uint64]] | None = None
        # key -> (candidate rows it was ranked over, its best-ranked view positions): ranking
        # the whole fleet again on every request of a session costs more than the rest of a pick.
        self._ranked: OrderedDict[str, tuple[IntArray, list[int]]] = OrderedDict()
        self.remembered_keys = remembered_keys

    def _endpoint_seeds(self, snapshot: FleetSnapshot) -> npt.NDArray[np.uint64]:
        if self._seeds is None or self._seeds[0] is not snapshot.membership:
            seeds = np.array(
                [zlib.crc32(a.encode()) * 0x9E3779B1 for a in snapshot.membership], dtype=np.uint64
            )
            self._seeds = (snapshot.membership, seeds)
        return self._seeds[1]

    def _ranks(self, view: PickView, key: str) -> npt.NDArray[np.uint64]:
        key_hash = np.uint64(zlib.crc32(key.encode()) | (zlib.adler32(key.encode()) << 32))
        return _mix(self._endpoint_seeds(view.snapshot)[view.rows] ^ key_hash)

    def _best_ranked(self, view: PickView, key: str) -> list[int]:
        entry = self._ranked.get(key)
        if entry is not None and entry[0] is view.rows:
            self._ranked.move_to_end(key)
            return entry[1]
        ranks = self._ranks(view, key)
        keep = min(view.size, _BEST_KEPT)
        top = np.argpartition(ranks, view.size - keep)[view.size - keep :]
        best: list[int] = top[np.argsort(ranks[top])[::-1]].tolist()
        self._ranked[key] = (view.rows, best)
        if len(self._ranked) > self.remembered_keys:
            self._ranked.popitem(last=False)
        return best

    def preferred(self, view: PickView, key: str) -> int | None:
        """Index into the view of the replica this key belongs on, or None."""
        if view.size == 0:
            return None
        load = np.maximum(view.waiting + view.running, view.inflight)
        bound = self.load_factor * float(load.sum()) / view.size + 1.0
        for position in self._best_ranked(view, key):
            if load[position] <= bound:
                return position
        # Every one of the best-ranked few is over the bound: rank everyone (one linear pass).
        eligible = load <= bound
        if not eligible.any():
            return None
        return int(np.where(eligible, self._ranks(view, key), np.uint64(0)).argmax())

    def score(self, view: PickView) -> Sparse | None:
        key = view.ctx.session_key
        best = self.preferred(view, key) if key else None
        return None if best is None else Sparse([best], [1.0])

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Params:
    load_factor: float = (
        1.25  # Leave a session's endpoint once its load exceeds this multiple of the best one's.
    )


def make(params: Params, context: PluginContext) -> SessionScorer:
    return SessionScorer(params.load_factor)


PLUGIN = PluginType(SessionScorer.name, "scorer", Params, make)
