"""Filter: prefer endpoints with fresh metrics; keep stale ones only when nothing is fresh.

Stale data is not proof that an endpoint is down (its /metrics may just be slow), so when every
candidate is stale we keep them all rather than fail the request; the scorers then see their
last known load, which the in-flight count keeps honest. A soft filter: when fewer fresh
endpoints exist than the list has places, stale ones fill the fallbacks (after the fresh ones).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet.state import BoolArray
from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.scheduler import PickView, SchedulerConfig, register


class StaleFilter:
    name: ClassVar[str] = "stale"
    per_request: ClassVar[bool] = False
    soft: ClassVar[bool] = True

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s

    def keep(self, view: PickView) -> BoolArray:
        fresh: BoolArray = view.age_s <= self.stale_after_s
        return fresh if fresh.any() else np.ones(view.size, dtype=np.bool_)


@register(StaleFilter.name)
def _make(config: SchedulerConfig, _outliers: OutlierDetector) -> StaleFilter:
    return StaleFilter(config.stale_after_s)
