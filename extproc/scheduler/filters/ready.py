"""Filter: only endpoints that are discovered ready, healthy and have been scraped successfully.

A model server can be discovered long before it can serve (loading weights takes minutes);
``FleetSnapshot.ready_since`` is nan until discovery says Ready and ``/health`` passes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet.state import BoolArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType


class ReadyFilter:
    name: ClassVar[str] = "ready"
    per_request: ClassVar[bool] = False
    soft: ClassVar[bool] = False

    def keep(self, view: PickView) -> BoolArray:
        snapshot = view.snapshot
        return ~np.isnan(snapshot.ready_since[view.rows]) & snapshot.healthy[view.rows]


def make(params: NoParams, context: PluginContext) -> ReadyFilter:
    return ReadyFilter()


PLUGIN = PluginType(ReadyFilter.name, "filter", NoParams, make)
