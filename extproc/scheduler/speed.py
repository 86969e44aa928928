"""Each endpoint's prefill and decode speed, learned from what it reports and what we observe.

A GPU class is not a fixed fraction of another: prefill is compute-bound and decode is
memory-bandwidth-bound, they scale differently between classes and models, a node can throttle,
and a new GPU type has no entry in anyone's table. So speeds are estimated online from two kinds
of evidence:

- the server's own cumulative counters, as deltas between scrapes: prompt tokens and seconds
  spent in prefill (vLLM's ``request_prefill_time_seconds``, or TTFT minus queue time), and
  decode tokens and seconds (the inter-token-latency histogram's ``_count`` and ``_sum``);
- the observer's per-response TTFT with the prompt's token count, and time per output token.

Each source keeps decayed sums of seconds and tokens (half-life ``half_life_s``): the estimate
is their ratio, so a throttled endpoint's new pace dominates within a few half-lives, while an
idle endpoint keeps its last estimate (decay scales both sums alike). The server's figures win
over ours for prefill, because our TTFT also holds the queue wait and the network.

The estimator is fed off the request path (the collector's snapshot publication, the
observer's responses) and hands the scheduler per-row arrays once per snapshot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from extproc.fleet.state import WORK_COUNTERS, FleetSnapshot, FloatArray

HALF_LIFE_S = 10.0
# Evidence below this many (decayed) tokens is too thin to trust over the prior or the fleet.
MIN_PREFILL_TOKENS = 256.0
MIN_DECODE_TOKENS = 16.0


@dataclass(slots=True)
class Decayed:
    """A ratio of two sums (e.g. seconds per token), both decayed by the time since the last
    sample, so recent samples dominate."""

    total: float = 0.0
    count: float = 0.0
    at: float = math.nan

    def add(self, total: float, count: float, now: float, half_life_s: float) -> None:
        if not math.isnan(self.at) and now > self.at:
            keep = 0.5 ** ((now - self.at) / half_life_s)
            self.total *= keep
            self.count *= keep
        self.total += total
        self.count += count
        self.at = now if math.isnan(self.at) else max(self.at, now)

    def ratio(self, min_count: float) -> float:
        return self.total / self.count if self.count >= min_count and self.total > 0 else math.nan


@dataclass(slots=True)
class _Evidence:
    server_prefill: Decayed = field(default_factory=Decayed)
    server_decode: Decayed = field(default_factory=Decayed)
    observed_prefill: Decayed = field(default_factory=Decayed)
    observed_decode: Decayed = field(default_factory=Decayed)
    # The last cumulative counters seen (WORK_COUNTERS' order).
    counters: tuple[float, ...] = ()

    def prefill_s_per_token(self) -> float:
        server = self.server_prefill.ratio(MIN_PREFILL_TOKENS)
        return server if not math.isnan(server) else self.observed_prefill.ratio(MIN_PREFILL_TOKENS)

    def decode_s_per_token(self) -> float:
        server = self.server_decode.ratio(MIN_DECODE_TOKENS)
        return server if not math.isnan(server) else self.observed_decode.ratio(MIN_DECODE_TOKENS)


def _delta(new: float, old: float) -> float:
    """Growth of a counter; nan when unknown or reset (a restarted server starts from 0)."""
    if math.isnan(new) or math.isnan(old) or new < old:
        return math.nan
    return new - old


class SpeedEstimator:
    def __init__(self, half_life_s: float = HALF_LIFE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.half_life_s = half_life_s
        self.clock = clock
        self._by_address: dict[str, _Evidence] = {}
        # Fleet-wide prompt and output tokens per request (decayed): the traffic's shape.
        self._prompt_per_request = Decayed()
        self._output_per_request = Decayed()
        self._cache: tuple[FleetSnapshot, FloatArray, FloatArray] | None = None
        self._membership: tuple[str, ...] = ()

    def _evidence(self, address: str) -> _Evidence:
        evidence = self._by_address.get(address)
        if evidence is None:
            evidence = self._by_address[address] = _Evidence()
        return evidence

    def observe_snapshot(self, snapshot: FleetSnapshot) -> None:
        """Counter deltas since the previous snapshot (a FleetState listener)."""
        if snapshot.prompt_tokens_total.size != snapshot.size:
            return
        now = self.clock()
        half_life = self.half_life_s
        columns = np.vstack([getattr(snapshot, name) for name in WORK_COUNTERS])
        reported = ~np.all(np.isnan(columns), axis=0)
        for row in np.flatnonzero(reported).tolist():
            address = snapshot.endpoints[row].address
            evidence = self._evidence(address)
            new = tuple(columns[:, row].tolist())
            old = evidence.counters
            if new == old:
                continue
            evidence.counters = new
            if not old:
                continue  # the first sight of a server: its totals so far are not a rate
            prompt, prefill_s, decode_tokens, decode_s, requests = (
                _delta(a, b) for a, b in zip(new, old, strict=True)
            )
            if prompt > 0 and prefill_s > 0:
                evidence.server_prefill.add(prefill_s, prompt, now, half_life)
            if decode_tokens > 0 and decode_s > 0:
                evidence.server_decode.add(decode_s, decode_tokens, now, half_life)
            if requests > 0:
                if prompt > 0:
                    self._prompt_per_request.add(prompt, requests, now, half_life)
                if decode_tokens >= 0:
                    # Decode tokens are intervals between tokens: one fewer than the output.
                    self._output_per_request.add(decode_tokens + requests, requests, now, half_life)

    def observe_response(
        self,
        address: str,
        prompt_tokens: int | None,
        ttft_s: float,
        time_per_output_token_s: float,
        output_tokens: int | None,
    ) -> None:
        """One streamed response as the observer saw it."""
        now = self.clock()
        evidence = self._evidence(address)
        half_life = self.half_life_s
        if prompt_tokens and ttft_s > 0 and math.isfinite(ttft_s):
            evidence.observed_prefill.add(ttft_s, float(prompt_tokens), now, half_life)
        if output_tokens and output_tokens > 1 and time_per_output_token_s > 0:
            evidence.observed_decode.add(
                time_per_output_token_s * (output_tokens - 1), float(output_tokens - 1), now, half_life
            )
            self._output_per_request.add(float(output_tokens), 1.0, now, half_life)
        if prompt_tokens:
            self._prompt_per_request.add(float(prompt_tokens), 1.0, now, half_life)

    def forget(self, keep: set[str]) -> None:
        for address in [a for a in self._by_address if a not in keep]:
            del self._by_address[address]

    def mean_prompt_tokens(self) -> float:
        """Prompt tokens per request in recent traffic (nan before any evidence)."""
        return self._prompt_per_request.ratio(1.0)

    def mean_output_tokens(self) -> float:
        """Output tokens per request in recent traffic (nan before any evidence)."""
        return self._output_per_request.ratio(1.0)

    def evidence(self, snapshot: FleetSnapshot) -> tuple[FloatArray, FloatArray]:
        """Per snapshot row: prefill and decode seconds per token (nan: no evidence yet).

        Built once per snapshot, in Python over the fleet: the collector's listener does it
        off the request path, so picks find it cached. What the observer adds between two
        snapshots shows in the next one (a scrape interval later).
        """
        cached = self._cache
        if cached is not None and cached[0] is snapshot:
            return cached[1], cached[2]
        prefill = np.full(snapshot.size, np.nan)
        decode = np.full(snapshot.size, np.nan)
        index = snapshot.index
        for address, evidence in self._by_address.items():
            row = index.get(address)
            if row is not None:
                prefill[row] = evidence.prefill_s_per_token()
                decode[row] = evidence.decode_s_per_token()
        prefill.setflags(write=False)
        decode.setflags(write=False)
        self._cache = (snapshot, prefill, decode)
        return prefill, decode

    def on_publish(self, snapshot: FleetSnapshot) -> None:
        """FleetState listener: take the new counters, then precompute the arrays. Endpoints
        that left the fleet are forgotten (pods come and go; their evidence would pile up)."""
        if snapshot.membership is not self._membership:
            self._membership = snapshot.membership
            self.forget(set(snapshot.index))
        self.observe_snapshot(snapshot)
        self.evidence(snapshot)
