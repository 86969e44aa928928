"""Passive health: eject endpoints that fail, track each endpoint's observed latency.

Fed from the response-headers phase (status, and time from decision to headers) and, for
streamed responses, from the observed time to first token (extproc.observe). Like Envoy's
outlier detection: consecutive failures (5xx, 429, resets/timeouts reported as status 0) eject
an endpoint for a period that doubles with each ejection up to a cap, and no more than
``max_ejection_share`` of the fleet is ejected at once, so a fleet-wide problem never empties it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from extproc.fleet.state import BoolArray, FleetSnapshot, FloatArray


@dataclass(slots=True)
class _Health:
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    latency_ewma_s: float = math.nan
    samples: int = 0


@dataclass(slots=True)
class OutlierConfig:
    consecutive_failures: int = 3
    base_ejection_s: float = 5.0
    max_ejection_s: float = 300.0
    max_ejection_share: float = 0.5
    ewma_alpha: float = 0.2
    # An endpoint whose latency EWMA exceeds this multiple of the fleet median is "slow".
    slow_factor: float = 3.0


@dataclass
class OutlierDetector:
    config: OutlierConfig = field(default_factory=OutlierConfig)
    clock: Callable[[], float] = time.monotonic
    # How many endpoints the fleet has (the ejection cap is a share of it). Without it, the
    # endpoints we have heard from: right after start that can be just the failing one.
    fleet_size: Callable[[], int] | None = None
    _health: dict[str, _Health] = field(default_factory=dict)
    ejections_total: int = 0
    _generation: int = 0
    _mask_cache: tuple[tuple[str, ...], int, float, BoolArray] | None = None
    _latency_cache: tuple[tuple[str, ...], float, FloatArray] | None = None

    def observe(self, address: str, status: int, elapsed_s: float) -> None:
        health = self._health.setdefault(address, _Health())
        failed = status == 0 or status == 429 or status >= 500
        if not failed:
            health.consecutive_failures = 0
            if not math.isnan(elapsed_s):
                self._add_latency(health, elapsed_s)
            return
        health.consecutive_failures += 1
        if health.consecutive_failures >= self.config.consecutive_failures and not self.is_ejected(address):
            self._eject(address, health)

    def observe_latency(self, address: str, elapsed_s: float) -> None:
        """A latency sample without a status: the time to first token read from a stream."""
        self._add_latency(self._health.setdefault(address, _Health()), elapsed_s)

    def _add_latency(self, health: _Health, elapsed_s: float) -> None:
        if math.isnan(health.latency_ewma_s):
            health.latency_ewma_s = elapsed_s
        else:
            health.latency_ewma_s += self.config.ewma_alpha * (elapsed_s - health.latency_ewma_s)
        health.samples += 1

    def _eject(self, address: str, health: _Health) -> None:
        now = self.clock()
        known = max(len(self._health), self.fleet_size() if self.fleet_size is not None else 0)
        allowed = int(known * self.config.max_ejection_share)
        ejected = sum(1 for h in self._health.values() if h.ejected_until > now)
        if ejected + 1 > allowed:
            return  # never eject past the cap (nor a lone endpoint): better a flaky endpoint than none
        period = min(self.config.max_ejection_s, self.config.base_ejection_s * 2**health.ejections)
        health.ejections += 1
        health.ejected_until = now + period
        health.consecutive_failures = 0
        self.ejections_total += 1
        self._generation += 1

    @property
    def generation(self) -> int:
        """Changes whenever an endpoint is ejected (state derived from ejections is stale then)."""
        return self._generation

    def is_ejected(self, address: str) -> bool:
        health = self._health.get(address)
        return health is not None and health.ejected_until > self.clock()

    def ejected_mask(self, snapshot: FleetSnapshot) -> BoolArray:
        """Per snapshot row: ejected now. Recomputed only when ejections or membership change."""
        now = self.clock()
        cached = self._mask_cache
        if (
            cached is not None
            and cached[0] is snapshot.membership
            and cached[1] == self._generation
            and now < cached[2]
        ):
            return cached[3]
        mask = np.zeros(snapshot.size, dtype=np.bool_)
        next_change = math.inf
        for address, health in self._health.items():
            if health.ejected_until > now:
                row = snapshot.index.get(address)
                if row is not None:
                    mask[row] = True
                next_change = min(next_change, health.ejected_until)
        self._mask_cache = (snapshot.membership, self._generation, next_change, mask)
        return mask

    def latency(self, snapshot: FleetSnapshot) -> FloatArray:
        """Observed latency EWMA per snapshot row (nan where nothing was observed yet).

        Rebuilt at most every 50 ms: EWMAs move slowly, and the request path must not loop
        over the fleet in Python on every pick.
        """
        now = self.clock()
        cached = self._latency_cache
        if cached is not None and cached[0] is snapshot.membership and now - cached[1] < 0.05:
            return cached[2]
        out = np.full(snapshot.size, np.nan)
        for address, health in self._health.items():
            row = snapshot.index.get(address)
            if row is not None:
                out[row] = health.latency_ewma_s
        self._latency_cache = (snapshot.membership, now, out)
        return out

    def slow(self, snapshot: FleetSnapshot) -> BoolArray:
        """Flags endpoints far slower than the fleet's median before they start timing out."""
        latency = self.latency(snapshot)
        known = latency[~np.isnan(latency)]
        if known.size < 3:
            return np.zeros(snapshot.size, dtype=np.bool_)
        return np.nan_to_num(latency, nan=0.0) > self.config.slow_factor * float(np.median(known))
