"""Filter: prefer endpoints with fresh metrics; keep stale ones only when nothing is fresh.

Stale data is not proof that an endpoint is down (its /metrics may just be slow), so when every
candidate is stale we keep them all rather than fail the request; the scorers then see their
last known load, which the in-flight count keeps honest. A soft filter: when fewer fresh
endpoints exist than the list has places, stale ones fill the fallbacks (after the fresh ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from extproc.fleet.state import BoolArray
from extproc.scheduler.framework import PickView, PluginContext, PluginType


class StaleFilter:
    name: ClassVar[str] = "stale"
    per_request: ClassVar[bool] = False
    soft: ClassVar[bool] = True

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s

    def keep(self, view: PickView) -> BoolArray:
        fresh: BoolArray = view.age_s <= self.stale_after_s
        return fresh if fresh.any() else np.ones(view.size, dtype=np.bool_)


@dataclass(frozen=True, slots=True)
class Params:
    max_age_s: float = 1.0  # Endpoints whose last good scrape is older than this are demoted.


def make(params: Params, context: PluginContext) -> StaleFilter:
    return StaleFilter(params.max_age_s)


PLUGIN = PluginType(StaleFilter.name, "filter", Params, make)
