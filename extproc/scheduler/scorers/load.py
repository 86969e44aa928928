"""Scorer: the predicted time to this request's first token on each endpoint, from its speeds.

Speeds are each endpoint's own, learned from evidence (extproc.scheduler.speed): prefill
seconds per prompt token and decode seconds per output token, which scale differently across
GPU classes. The prediction, in seconds:

- this request's own prefill: its prompt tokens x the endpoint's prefill time per token,
  plus one decode step;
- the requests queued ahead of it (the scrape's count, or ours sent since if more): each
  must be prefilled, and each waits for a seat, which frees as the running batch finishes:
  a typical output's decode time divided by the running sequences.

A running batch with free seats barely delays a new request (continuous batching admits it
at the next step); a queue on a fast GPU can still lose to an idle slow one, once the wait
behind it exceeds the slow GPU's own prefill.

The value is returned in units of a typical request's TTFT on the median endpoint, so the
framework's minimum spread (one unit) means "one typical TTFT", whatever the hardware.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from extproc.fleet.state import FloatArray
from extproc.scheduler.framework import NoParams, PickView, PluginContext, PluginType

CHARS_PER_TOKEN = 4  # when the request's token estimate is missing


class LoadScorer:
    name: ClassVar[str] = "load"
    per_request: ClassVar[bool] = True

    def score(self, view: PickView) -> FloatArray:
        ctx = view.ctx
        prompt = ctx.prompt_tokens or max(1, len(ctx.prompt_text) // CHARS_PER_TOKEN)
        traffic = view.traffic
        prefill, decode = view.prefill_s, view.decode_s
        queued = view.queued()
        running = np.maximum(view.running, view.inflight - queued)
        seat_wait = traffic.output_tokens * decode / np.maximum(running, 1.0)
        predicted = prompt * prefill + decode + queued * (traffic.prompt_tokens * prefill + seat_wait)
        result: FloatArray = -predicted / max(traffic.typical_ttft_s, 1e-6)
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> LoadScorer:
    return LoadScorer()


PLUGIN = PluginType(LoadScorer.name, "scorer", NoParams, make)
