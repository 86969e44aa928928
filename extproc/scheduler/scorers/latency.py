"""Scorer: lower observed latency is better; endpoints flagged slow score lowest.

Uses what this router saw (EWMA of decision-to-response-headers time, from the outlier
detector) and falls back to the server's own mean TTFT from /metrics where we have not
observed anything yet. Unknown latency scores as the best known one, so endpoints we have not
measured yet still get tried instead of all traffic settling on the first one measured.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType
from extproc.scheduler.outlier import OutlierDetector


class LatencyScorer:
    name: ClassVar[str] = "latency"
    per_request: ClassVar[bool] = False

    def __init__(self, outliers: OutlierDetector) -> None:
        self.outliers = outliers

    def score(self, view: PickView) -> FloatArray:
        observed = self.outliers.latency(view.snapshot)[view.rows]
        latency = np.where(np.isnan(observed), view.snapshot.ttft_mean_s[view.rows], observed)
        known = ~np.isnan(latency)
        if not known.any():
            return np.zeros(view.size)
        latency = np.where(known, latency, float(latency[known].min()))
        slow = self.outliers.slow(view.snapshot)[view.rows]
        result: FloatArray = np.where(slow, -np.inf, -latency)
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> LatencyScorer:
    return LatencyScorer(context.outliers)


PLUGIN = PluginType(LatencyScorer.name, "scorer", NoParams, make)
