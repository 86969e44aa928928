"""Per-tenant spend on hosted providers, against a budget in US dollars per hour.

A bucket per tenant holding up to one hour's budget, refilled continuously; each response's
actual cost (token usage x the policy's prices) is taken out when it has been observed. While
a tenant's bucket is empty its requests stay self-hosted: provider targets are skipped and
spill-over is off. In-process, like the in-memory limiter: with several ext_proc replicas each
holds its own share.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SpendTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._level: dict[str, tuple[float, float]] = {}  # tenant -> (dollars left, at)

    def _refilled(self, tenant: str, budget_per_hour: float, now: float) -> float:
        level, at = self._level.get(tenant, (budget_per_hour, now))
        return min(budget_per_hour, level + (now - at) * budget_per_hour / 3600.0)

    def allows(self, tenant: str | None, budget_per_hour: float | None, now: float) -> bool:
        if budget_per_hour is None or tenant is None:
            return True
        return self._refilled(tenant, budget_per_hour, now) > 0.0

    def seconds_until_allowed(self, tenant: str, budget_per_hour: float, now: float) -> float:
        level = self._refilled(tenant, budget_per_hour, now)
        return 0.0 if level > 0 else (1e-9 - level) * 3600.0 / budget_per_hour

    def charge(self, tenant: str, budget_per_hour: float, dollars: float) -> None:
        now = self.clock()
        self._level[tenant] = (self._refilled(tenant, budget_per_hour, now) - dollars, now)
