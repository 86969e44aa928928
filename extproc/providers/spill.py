"""Spill-over: will every self-hosted endpoint miss this request's time-to-first-token objective?

The prediction reads the scheduler's view of each candidate: the requests it holds (scraped
running + waiting, or more if we sent more since) and how many it runs at once (its batch: the
most it has been seen running, learned per endpoint from the scrapes). A request that finds the
batch full waits for ``ahead`` completions, each taking about ``queue_s_per_request`` (mean
request duration / batch size):

    ahead = held - batch + 1 (when held >= batch, else 0)
    predicted TTFT = ahead x queue_s_per_request

The servers' own TTFT histogram is not used: vLLM exports it cumulatively since start, so its
mean says how the last hours went, not the next second. Per decision: a handful of numpy
operations over the candidate rows (a few µs); the learned batch sizes are refreshed once per
fleet snapshot.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from extproc.fleet.state import FleetSnapshot, FloatArray, IntArray


class SpillPredictor:
    def __init__(self) -> None:
        self._most_running: dict[str, float] = {}  # endpoint address -> most it ran at once
        self._batch: tuple[FleetSnapshot, FloatArray] | None = None
        # Per (snapshot, candidate rows): what does not change between decisions.
        self._prepared: tuple[FleetSnapshot, IntArray, FloatArray, FloatArray] | None = None

    def batch_sizes(self, snapshot: FleetSnapshot) -> FloatArray:
        cached = self._batch
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        seen = self._most_running
        sizes = np.empty(snapshot.size)
        for row, endpoint in enumerate(snapshot.endpoints):
            most = max(seen.get(endpoint.address, 1.0), float(snapshot.running[row]))
            seen[endpoint.address] = sizes[row] = most
        self._batch = (snapshot, sizes)
        return sizes

    def _prepare(self, snapshot: FleetSnapshot, rows: IntArray) -> tuple[FloatArray, FloatArray]:
        """``ahead`` from the scrape (held - batch + 1) and ``batch - 1``, for these rows."""
        prepared = self._prepared
        if prepared is not None and prepared[0] is snapshot and prepared[1] is rows:
            return prepared[2], prepared[3]
        batch = self.batch_sizes(snapshot)[rows]
        scraped_ahead: FloatArray = snapshot.waiting[rows] + snapshot.running[rows] - batch + 1.0
        batch_less_one: FloatArray = batch - 1.0
        self._prepared = (snapshot, rows, scraped_ahead, batch_less_one)
        return scraped_ahead, batch_less_one

    def predicted_ttft_s(
        self,
        snapshot: FleetSnapshot,
        rows: IntArray,
        inflight: npt.NDArray[np.int64],
        queue_s_per_request: float,
    ) -> FloatArray:
        scraped_ahead, batch_less_one = self._prepare(snapshot, rows)
        ahead = np.maximum(np.maximum(scraped_ahead, inflight[rows] - batch_less_one), 0.0)
        result: FloatArray = ahead * queue_s_per_request
        return result

    def misses(
        self,
        snapshot: FleetSnapshot,
        row: int,
        inflight: npt.NDArray[np.int64],
        objective_s: float,
        queue_s_per_request: float,
    ) -> bool:
        """One endpoint (the scheduler's pick): scalar arithmetic, well under a microsecond's worth
        of array work; only when it misses are all candidates checked."""
        batch = float(self.batch_sizes(snapshot)[row])
        held = max(float(snapshot.waiting[row] + snapshot.running[row]), float(inflight[row]))
        return (held - batch + 1.0) * queue_s_per_request > objective_s

    def every_endpoint_misses(
        self,
        snapshot: FleetSnapshot,
        rows: IntArray,
        inflight: npt.NDArray[np.int64],
        objective_s: float,
        queue_s_per_request: float,
    ) -> bool:
        """True when no candidate is predicted to answer within ``objective_s`` (none at all: True)."""
        if rows.size == 0:
            return True
        scraped_ahead, batch_less_one = self._prepare(snapshot, rows)
        # min over rows of max(scraped, ours) > objective / wait per request, in three array ops.
        least = np.maximum(scraped_ahead, inflight[rows] - batch_less_one).min()
        return bool(least * queue_s_per_request > objective_s)
