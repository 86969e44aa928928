"""Scorer: fewer requests sent by this process and not yet answered is better.

Scrapes are 50-100 ms apart; this is what keeps a burst between two scrapes from landing on
the one endpoint that looked idle.
"""

from __future__ import annotations

from typing import ClassVar

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType


class InFlightScorer:
    name: ClassVar[str] = "inflight"
    per_request: ClassVar[bool] = True

    def score(self, view: PickView) -> FloatArray:
        result: FloatArray = -view.inflight
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> InFlightScorer:
    return InFlightScorer()


PLUGIN = PluginType(InFlightScorer.name, "scorer", NoParams, make)
