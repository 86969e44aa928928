"""Scorer: fewer waiting requests is better (vLLM's vllm:num_requests_waiting)."""

from __future__ import annotations

from typing import ClassVar

from extproc.fleet.state import FloatArray
from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.scheduler import PickView, SchedulerConfig, register


class QueueScorer:
    name: ClassVar[str] = "queue"
    per_request: ClassVar[bool] = False

    def score(self, view: PickView) -> FloatArray:
        result: FloatArray = -view.waiting
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


@register(QueueScorer.name)
def _make(_config: SchedulerConfig, _outliers: OutlierDetector) -> QueueScorer:
    return QueueScorer()
