"""Filter: stay in the caller's zone while it has capacity; fail over across zones otherwise."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet import BoolArray
from extproc.outlier import OutlierDetector
from extproc.picker import PickView, SchedulerConfig, register


class LocalityFilter:
    name: ClassVar[str] = "locality"

    def __init__(self, queue_threshold: float) -> None:
        self.queue_threshold = queue_threshold

    def keep(self, view: PickView) -> BoolArray:
        everyone = np.ones(view.size, dtype=np.bool_)
        zone = view.ctx.zone
        if not zone:
            return everyone
        endpoints = view.snapshot.endpoints
        local = np.fromiter((endpoints[r].zone == zone for r in view.rows), dtype=np.bool_, count=view.size)
        queue = view.queued()
        has_room = local & (queue < self.queue_threshold)
        return local if has_room.any() else everyone


@register(LocalityFilter.name)
def _make(config: SchedulerConfig, _outliers: OutlierDetector) -> LocalityFilter:
    return LocalityFilter(config.queue_threshold)
