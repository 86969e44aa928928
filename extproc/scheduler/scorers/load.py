"""Scorer: the predicted time to this request's first token on each endpoint, from its speeds.

Speeds are each endpoint's own, learned from evidence (extproc.scheduler.speed): prefill
seconds per prompt token and decode seconds per output token, which scale differently across
GPU classes. The prediction, in seconds:

- this request's own prefill: its prompt tokens x the endpoint's prefill time per token,
  plus one decode step;
- the requests queued ahead of it (the scrape's count, or ours sent since if more): each
  must be prefilled, and each waits for a seat, which frees as the running batch finishes:
  a typical output's decode time divided by the running sequences (as scraped).

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

    def __init__(self) -> None:
        # The fleet-only terms, per candidate set: a pick then costs a handful of array ops
        # (at 10,000 endpoints each op is ~10 µs).
        self._key: tuple[object, object] | None = None
        self._terms: tuple[FloatArray, FloatArray, FloatArray] | None = None

    def fleet_terms(self, view: PickView) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per candidate: the prediction's cost of one prompt token, of the one decode step, and
        of each request queued ahead (in typical TTFTs); the Wasm snapshot carries them too."""
        key = self._key
        if key is not None and key[0] is view.snapshot and key[1] is view.rows and self._terms is not None:
            return self._terms
        traffic = view.traffic
        unit = 1.0 / max(traffic.typical_ttft_s, 1e-6)
        per_prompt_token = view.prefill_s * unit
        one_step = view.decode_s * unit
        seat_wait = traffic.output_tokens * view.decode_s / np.maximum(view.running, 1.0)
        per_queued = (traffic.prompt_tokens * view.prefill_s + seat_wait) * unit
        self._key, self._terms = (view.snapshot, view.rows), (per_prompt_token, one_step, per_queued)
        return self._terms

    def score(self, view: PickView) -> FloatArray:
        ctx = view.ctx
        prompt = ctx.prompt_tokens or max(1, len(ctx.prompt_text) // CHARS_PER_TOKEN)
        per_prompt_token, one_step, per_queued = self.fleet_terms(view)
        predicted = prompt * per_prompt_token
        predicted += one_step
        predicted += view.queued() * per_queued
        result: FloatArray = -predicted
        return result

    def picked(self, view: PickView, chosen_rows: list[int]) -> None:
        return None


def make(params: NoParams, context: PluginContext) -> LoadScorer:
    return LoadScorer()


PLUGIN = PluginType(LoadScorer.name, "scorer", NoParams, make)
