"""Scorer: expected wait, i.e. work ahead of this request divided by the endpoint's speed.

On a heterogeneous fleet a queue of 4 on an A100 clears faster than a queue of 2 on a T4;
scoring raw queue length alone sends too much to slow GPUs. Work ahead counts queued
requests (the scrape's, or ours sent since if more) and half of the running batch (each
running sequence slows every decode step).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet import FloatArray
from extproc.outlier import OutlierDetector
from extproc.picker import PickView, SchedulerConfig, register


class LoadScorer:
    name: ClassVar[str] = "load"
    per_request: ClassVar[bool] = True

    def score(self, view: PickView) -> FloatArray:
        work = view.queued() + 0.5 * np.maximum(view.running, view.inflight) + 1.0
        result: FloatArray = -work / view.speed
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


@register(LoadScorer.name)
def _make(_config: SchedulerConfig, _outliers: OutlierDetector) -> LoadScorer:
    return LoadScorer()
