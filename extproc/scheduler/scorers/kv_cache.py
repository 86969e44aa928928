"""Scorer: more free KV cache is better: a full cache means preemption and queueing."""

from __future__ import annotations

from typing import ClassVar

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType


class KVCacheScorer:
    name: ClassVar[str] = "kv_cache"
    per_request: ClassVar[bool] = False

    def score(self, view: PickView) -> FloatArray:
        result: FloatArray = 1.0 - view.snapshot.kv_usage[view.rows]
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> KVCacheScorer:
    return KVCacheScorer()


PLUGIN = PluginType(KVCacheScorer.name, "scorer", NoParams, make)
