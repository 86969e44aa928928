"""Scorer: expected wait, i.e. work ahead of this request divided by the endpoint's speed.

On a heterogeneous fleet a queue of 4 on an A100 clears faster than a queue of 2 on a T4;
scoring raw queue length alone sends too much to slow GPUs. Work ahead counts queued
requests (the scrape's, or ours sent since if more), a quarter of the running batch and half
of this request's own prefill.

Why those weights: a queued request delays a new one's first token by a whole slot turnover,
a running one only slows each decode step a little. Counting half the running batch (an
earlier version) let a fast GPU's *queue* grow to ~12 before a idle-slotted slow GPU won; in
the 100-1,000 GPU simulation (python -m extproc.bench.scale) the lighter weights cut median TTFT
at full load from 0.21-0.28 s to 0.13-0.22 s with the same tail.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType

RUNNING_WEIGHT = 0.25
OWN_WORK = 0.5


class LoadScorer:
    name: ClassVar[str] = "load"
    per_request: ClassVar[bool] = True

    def score(self, view: PickView) -> FloatArray:
        work = view.queued() + RUNNING_WEIGHT * np.maximum(view.running, view.inflight) + OWN_WORK
        result: FloatArray = -work / view.speed
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> LoadScorer:
    return LoadScorer()


PLUGIN = PluginType(LoadScorer.name, "scorer", NoParams, make)
