"""Which providers to avoid for now: a 429, 5xx or timeout keeps a provider out of decisions
until its ``retry-after`` has passed (or a cool-down when it gave none).

Written from the ext_proc streams that see a provider attempt's answer, read on every decision
that considers a provider: one dict lookup and a float compare.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Without a retry-after, a failed provider is left alone this long before it is tried again.
DEFAULT_COOLDOWN_S = 5.0
MAX_COOLDOWN_S = 600.0


def parse_retry_after(value: str) -> float | None:
    """Seconds from a ``retry-after`` header (delta-seconds form; HTTP dates are ignored)."""
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class ProviderHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cooling_until: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def available(self, name: str, now: float) -> bool:
        until = self._cooling_until.get(name)
        return until is None or now >= until

    def failed(self, name: str, retry_after_s: float | None, cooldown_s: float = DEFAULT_COOLDOWN_S) -> None:
        wait = min(MAX_COOLDOWN_S, retry_after_s if retry_after_s is not None else cooldown_s)
        until = self.clock() + wait
        # A later, shorter answer must not cut short what the provider asked for before.
        self._cooling_until[name] = max(until, self._cooling_until.get(name, 0.0))
        self.failures[name] = self.failures.get(name, 0) + 1

    def cooling(self, now: float) -> dict[str, float]:
        """Seconds left per provider still cooling (for explain and metrics)."""
        return {name: until - now for name, until in self._cooling_until.items() if until > now}
