"""Filter: drop endpoints the outlier detector has ejected after repeated failures."""

from __future__ import annotations

from typing import ClassVar

from extproc.fleet.state import BoolArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType
from extproc.scheduler.outlier import OutlierDetector


class OutlierFilter:
    name: ClassVar[str] = "outlier"
    per_request: ClassVar[bool] = False
    soft: ClassVar[bool] = False

    def __init__(self, outliers: OutlierDetector) -> None:
        self.outliers = outliers

    def keep(self, view: PickView) -> BoolArray:
        result: BoolArray = ~self.outliers.ejected_mask(view.snapshot)[view.rows]
        return result


def make(params: NoParams, context: PluginContext) -> OutlierFilter:
    return OutlierFilter(context.outliers)


PLUGIN = PluginType(OutlierFilter.name, "filter", NoParams, make)
