"""What the Wasm filter reports about the requests that ended in its VM (wasm/assembly/observe.ts).

From each report batch the brain feeds what the ext_proc path feeds from its observer stream:
the token and latency histograms, the decision log, spend (``llm_extproc_cost_usd``,
``limits.usd_per_hour``) and token budgets (``tokens_per_minute``), and it ends the concurrency
leases of escalated requests. A request arrives in one of two shapes:

- a **record** (RequestRecord, one compact JSON array) when the brain needs it one by one:
  escalated (joined with the brain's own decision, settled, its lease ended), refused by the
  filter, or sampled for the decision log (the snapshot's ``log_sample_below``); at most
  ``max_records`` per batch;
- otherwise four numbers in a **group** (ResponseGroup) of requests with the same tenant,
  model, pool, endpoint, status and streaming: the histograms take a group in one step.

``records_dropped`` counts what did not fit in a batch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from extproc.observability.telemetry import RouteRecord
from extproc.observe import Observation, ResponseBatch, Usage


@dataclass(frozen=True, slots=True)
class FilterRecord:
    request_id: str
    task: str
    tenant: str
    model_requested: str
    model_served: str
    tier: str
    rule: str
    priority: str
    endpoints: str
    served_by: str
    pool: str  # a provider's pool; "" for the fleet (the brain knows its endpoints' pools)
    status: int
    outcome: str
    streamed: bool
    ttft_us: int
    duration_us: int
    prompt_tokens: int
    completion_tokens: int
    error: str
    escalated: bool
    scores: str  # the filter's totals per listed endpoint, in millionths ("" when the brain decided)

    @classmethod
    def parse(cls, raw: Any) -> FilterRecord | None:
        """None for anything that is not a record of this shape (a newer filter, a bad batch)."""
        # Checked, not converted: the brain reads about one record per request.
        if type(raw) is not list or len(raw) != len(_TYPES):
            return None
        for value, kind in zip(raw, _TYPES, strict=True):
            if type(value) is not kind:
                return None
        values = raw.copy()
        values[_STREAMED] = values[_STREAMED] == 1
        values[_ESCALATED] = values[_ESCALATED] == 1
        return cls(*values)

    def observation(self, pool: str) -> Observation | None:
        """The response as the ext_proc path's observer would have seen it (None: the filter
        refused the request, nothing went upstream)."""
        if not self.endpoints and not self.pool:
            return None
        labels = Observation(
            self.served_by, self.model_served, pool, self.tier, self.tenant, self.request_id, self.status
        )
        labels.streamed = self.streamed
        return with_numbers(
            labels, self.ttft_us, self.duration_us, self.prompt_tokens, self.completion_tokens
        )

    def route_record(self, pool: str, now: float) -> RouteRecord:
        """The decision-log half of a request the filter decided itself."""
        duration_s = max(0, self.duration_us) / 1e6
        record = RouteRecord(
            self.request_id,
            task=self.task,
            started=now - duration_s,
            started_unix_ns=time.time_ns() - int(duration_s * 1e9),
            tenant=self.tenant or None,
            rule=self.rule,
            tier=self.tier,
            priority=self.priority,
            model_requested=self.model_requested,
            model_served=self.model_served,
            pool=pool,
            endpoints=self.endpoints.split(",") if self.endpoints else [],
            scores=self._scores(),
            status=self.status,
            served_by=self.served_by,
            outcome=self.outcome or "routed",
            finished=now,
        )
        if self.error:
            try:
                record.error = str(json.loads(self.error)["error"]["message"])
            except (ValueError, KeyError, TypeError):
                record.error = self.error
        return record

    def _scores(self) -> list[float] | None:
        """The pick's totals in the ext_proc path's units (None: not the filter's pick)."""
        if not self.scores:
            return None
        try:
            return [round(int(part) / 1e6, 4) for part in self.scores.split(",")]
        except ValueError:
            return None


# The array's positions are the fields' order: wasm/assembly/observe.ts's RequestRecord.json()
# writes them in this order (tests/wasm/test_records.py holds the two together).
RECORD_FIELDS = tuple(f.name for f in fields(FilterRecord))
# The JSON types: flags travel as 0 / 1.
_TYPES: tuple[type, ...] = tuple(
    {"str": str, "int": int, "bool": int}[str(f.type)] for f in fields(FilterRecord)
)
_STREAMED = RECORD_FIELDS.index("streamed")
_ESCALATED = RECORD_FIELDS.index("escalated")


def with_numbers(
    observation: Observation, ttft_us: int, duration_us: int, prompt_tokens: int, completion_tokens: int
) -> Observation:
    """The response's times and usage from the filter's numbers (-1: none), as the ext_proc
    observer reports them, filled into ``observation`` (its labels and ``streamed`` set)."""
    duration_s = duration_us / 1e6 if duration_us >= 0 else math.nan
    ttft_s = ttft_us / 1e6 if ttft_us >= 0 and observation.streamed else math.nan
    if prompt_tokens >= 0 or completion_tokens >= 0:
        observation.usage = Usage(
            prompt_tokens=prompt_tokens if prompt_tokens >= 0 else None,
            completion_tokens=completion_tokens if completion_tokens >= 0 else None,
            from_usage=True,
        )
    # The filter sees chunks, not tokens: the time per output token is the stream's time
    # after its first chunk spread over the tokens its usage reports.
    if observation.streamed and completion_tokens > 1 and not math.isnan(ttft_s):
        observation.time_per_output_token_s = max(0.0, duration_s - ttft_s) / (completion_tokens - 1)
    observation.ttft_s, observation.duration_s = ttft_s, duration_s
    return observation


# A group's values: four per request, in this order (observe.ts, Group.values).
GROUP_VALUES = ("duration_us", "ttft_us", "prompt_tokens", "completion_tokens")


@dataclass(frozen=True, slots=True)
class ResponseGroup:
    """Requests the brain needs only as numbers (observe.ts, Group): their shared labels, and
    per request its duration, time to first byte (µs) and token counts (-1: none)."""

    tenant: str
    model: str
    pool: str  # a provider's pool; "" for the fleet (the brain knows its endpoints' pools)
    endpoint: str  # the one that answered, else the first of the list
    answered: bool
    status: int
    streamed: bool
    values: npt.NDArray[np.int64]  # shape (requests, 4), columns GROUP_VALUES

    @classmethod
    def parse(cls, raw: Any) -> ResponseGroup | None:
        """None for anything that is not a group of this shape."""
        if type(raw) is not list or len(raw) != 8:
            return None
        tenant, model, pool, endpoint, answered, status, streamed, values = raw
        if not all(type(text) is str for text in (tenant, model, pool, endpoint)):
            return None
        if not all(type(number) is int for number in (answered, status, streamed)):
            return None
        if type(values) is not list or len(values) % len(GROUP_VALUES) != 0:
            return None
        try:
            array = np.array(values, dtype=np.int64).reshape(-1, len(GROUP_VALUES))
        except (TypeError, ValueError, OverflowError):
            return None
        return cls(tenant, model, pool, endpoint, answered == 1, status, streamed == 1, array)

    def __len__(self) -> int:
        return len(self.values)

    def labels(self, pool: str) -> Observation:
        """What the group's requests share, as an observation without numbers."""
        served_by = self.endpoint if self.answered else ""
        labels = Observation(served_by, self.model, pool, "", self.tenant, "", self.status)
        labels.streamed = self.streamed
        return labels

    def observations(self, pool: str) -> Iterator[Observation]:
        """Each request as its own observation (what the per-response consumers need)."""
        for duration_us, ttft_us, prompt_tokens, completion_tokens in self.values.tolist():
            yield with_numbers(self.labels(pool), ttft_us, duration_us, prompt_tokens, completion_tokens)

    def batch(self, pool: str) -> ResponseBatch:
        """The group's responses as arrays (for non-streamed ones: one step per histogram)."""
        values = self.values
        return ResponseBatch(self.model, pool, self.status, values[:, 0] / 1e6, values[:, 2], values[:, 3])

    def usage_total(self, pool: str) -> Observation | None:
        """The group's token usage summed (prices are linear in tokens), as one observation
        for spend accounting; None when no request reported usage."""
        prompt, completion = self.values[:, 2], self.values[:, 3]
        if not ((prompt >= 0) | (completion >= 0)).any():
            return None
        total = self.labels(pool)
        total.usage = Usage(
            prompt_tokens=int(prompt[prompt >= 0].sum()),
            completion_tokens=int(completion[completion >= 0].sum()),
            from_usage=True,
        )
        return total
