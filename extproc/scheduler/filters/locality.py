"""Filter: stay in the caller's zone while it has capacity; fail over across zones otherwise.

A soft filter: other zones still fill the fallback list when the caller's zone has fewer
endpoints than the list has places, so a retry can leave the zone rather than the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from extproc.fleet.state import BoolArray, FleetSnapshot
from extproc.scheduler.framework import PickView, PluginContext, PluginType


class LocalityFilter:
    name: ClassVar[str] = "locality"
    per_request: ClassVar[bool] = True
    soft: ClassVar[bool] = True

    def __init__(self, queue_threshold: float) -> None:
        self.queue_threshold = queue_threshold
        self._membership: tuple[str, ...] | None = None
        self._zones: dict[str, BoolArray] = {}

    def keep(self, view: PickView) -> BoolArray | None:
        zone = view.ctx.zone
        if not zone:
            return None
        local = self._in_zone(view.snapshot, zone)[view.rows]
        has_room = local & (view.queued() < self.queue_threshold)
        return local if has_room.any() else None

    def _in_zone(self, snapshot: FleetSnapshot, zone: str) -> BoolArray:
        """Per snapshot row: in this zone. Built once per membership and zone, not per pick."""
        if self._membership is not snapshot.membership:
            self._membership, self._zones = snapshot.membership, {}
        mask = self._zones.get(zone)
        if mask is None:
            mask = np.fromiter(
                (e.zone == zone for e in snapshot.endpoints), dtype=np.bool_, count=snapshot.size
            )
            if len(self._zones) < 256:  # zones come from requests: bound what we keep
                self._zones[zone] = mask
        return mask


@dataclass(frozen=True, slots=True)
class Params:
    spill_queue: float = (
        8.0  # Leave the caller's zone once every local endpoint has this many requests queued.
    )


def make(params: Params, context: PluginContext) -> LocalityFilter:
    return LocalityFilter(params.spill_queue)


PLUGIN = PluginType(LocalityFilter.name, "filter", Params, make)
