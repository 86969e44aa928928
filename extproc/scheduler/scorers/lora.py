"""Scorer: a request for a LoRA adapter prefers endpoints that already have it loaded.

Loading an adapter costs a pause; an endpoint with a free adapter slot is the next best.
Adapters come from vLLM's vllm:lora_requests_info (running_lora_adapters).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType


class LoraScorer:
    name: ClassVar[str] = "lora"
    per_request: ClassVar[bool] = True

    def score(self, view: PickView) -> FloatArray | None:
        adapter = view.ctx.lora_adapter
        if not adapter:
            return None
        loaded = view.snapshot.lora_adapters
        return np.fromiter(
            (1.0 if adapter in loaded[r] else 0.0 for r in view.rows), dtype=np.float64, count=view.size
        )

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> LoraScorer:
    return LoraScorer()


PLUGIN = PluginType(LoraScorer.name, "scorer", NoParams, make)
