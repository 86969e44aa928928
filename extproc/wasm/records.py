"""The Wasm filter's per-request records (wasm/assembly/observe.ts, RequestRecord).

Each report batch carries one compact JSON array per request that ended in the filter's VM
(at most ``max_records`` per batch; ``records_dropped`` counts the rest). From them the brain
feeds what the ext_proc path feeds from its observer stream: the token and latency
histograms, the decision log, spend (``llm_extproc_cost_usd``, ``limits.usd_per_hour``) and
token budgets (``tokens_per_minute``), and it ends the concurrency leases of escalated requests.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Any

from extproc.observability.telemetry import RouteRecord
from extproc.observe import Observation, Usage


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
        duration_s = self.duration_us / 1e6 if self.duration_us >= 0 else math.nan
        ttft_s = self.ttft_us / 1e6 if self.ttft_us >= 0 and self.streamed else math.nan
        usage = None
        if self.prompt_tokens >= 0 or self.completion_tokens >= 0:
            usage = Usage(
                prompt_tokens=self.prompt_tokens if self.prompt_tokens >= 0 else None,
                completion_tokens=self.completion_tokens if self.completion_tokens >= 0 else None,
                from_usage=True,
            )
        # The filter sees chunks, not tokens: the time per output token is the stream's time
        # after its first chunk spread over the tokens its usage reports.
        tpot_s = math.nan
        if self.streamed and self.completion_tokens > 1 and not math.isnan(ttft_s):
            tpot_s = max(0.0, duration_s - ttft_s) / (self.completion_tokens - 1)
        return Observation(
            endpoint=self.served_by,
            model=self.model_served,
            pool=pool,
            tier=self.tier,
            tenant=self.tenant,
            request_id=self.request_id,
            status=self.status,
            streamed=self.streamed,
            ttft_s=ttft_s,
            time_per_output_token_s=tpot_s,
            duration_s=duration_s,
            usage=usage,
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


# The array's positions are the fields' order: wasm/assembly/observe.ts's RequestRecord.json()
# writes them in this order (tests/wasm/test_records.py holds the two together).
RECORD_FIELDS = tuple(f.name for f in fields(FilterRecord))
# The JSON types: flags travel as 0 / 1.
_TYPES: tuple[type, ...] = tuple(
    {"str": str, "int": int, "bool": int}[str(f.type)] for f in fields(FilterRecord)
)
_STREAMED = RECORD_FIELDS.index("streamed")
_ESCALATED = RECORD_FIELDS.index("escalated")
