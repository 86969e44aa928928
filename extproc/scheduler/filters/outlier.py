"""Filter: drop endpoints the outlier detector has ejected after repeated failures."""

from __future__ import annotations

from typing import ClassVar

from extproc.fleet.state import BoolArray
from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.scheduler import PickView, SchedulerConfig, register


class OutlierFilter:
    name: ClassVar[str] = "outlier"
    per_request: ClassVar[bool] = False
    soft: ClassVar[bool] = False

    def __init__(self, outliers: OutlierDetector) -> None:
        self.outliers = outliers

    def keep(self, view: PickView) -> BoolArray:
        result: BoolArray = ~self.outliers.ejected_mask(view.snapshot)[view.rows]
        return result


@register(OutlierFilter.name)
def _make(_config: SchedulerConfig, outliers: OutlierDetector) -> OutlierFilter:
    return OutlierFilter(outliers)
