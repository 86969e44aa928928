"""Scorer: fewer waiting requests is better (vLLM's vllm:num_requests_waiting)."""

from __future__ import annotations

from typing import ClassVar

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType


class QueueScorer:
    name: ClassVar[str] = "queue"
    per_request: ClassVar[bool] = False

    def score(self, view: PickView) -> FloatArray:
        result: FloatArray = -view.waiting
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> QueueScorer:
    return QueueScorer()


PLUGIN = PluginType(QueueScorer.name, "scorer", NoParams, make)
