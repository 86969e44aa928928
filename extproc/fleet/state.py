"""Fleet state: what the collectors know about every endpoint, published as immutable snapshots.

Collectors (discovery, scraping) run beside the request path and publish a new
:class:`FleetSnapshot` by swapping one reference in :class:`FleetState`. The request path
only ever reads ``FleetState.snapshot``, so it never waits on I/O or a lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A model server we discovered. ``address`` is exactly what Envoy's override_host receives."""

    address: str
    pool: str = "default"
    models: tuple[str, ...] = ()
    gpu_class: str = "unknown"
    zone: str = ""
    node: str = ""
    # Discovery may know an endpoint exists before it can serve (pod not Ready, terminating).
    discovered_ready: bool = True


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """One scrape of one endpoint, already reduced to the series the scheduler uses."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    ttft_mean_s: float = math.nan
    # Cumulative counters the server reports (nan: not reported), for speed estimates.
    prompt_tokens_total: float = math.nan
    prefill_seconds_total: float = math.nan
    decode_tokens_total: float = math.nan
    decode_seconds_total: float = math.nan
    requests_total: float = math.nan  # requests that got their first token
    running_lora_adapters: tuple[str, ...] = ()
    max_lora: int = 0
    healthy: bool = True
    scraped_at: float = math.nan  # time.monotonic() of the successful scrape


WORK_COUNTERS = (
    "prompt_tokens_total",
    "prefill_seconds_total",
    "decode_tokens_total",
    "decode_seconds_total",
    "requests_total",
)

_Scalar = TypeVar("_Scalar", bound=np.generic)


def _frozen(array: npt.NDArray[_Scalar]) -> npt.NDArray[_Scalar]:
    array.setflags(write=False)
    return array


_NO_VALUES: FloatArray = _frozen(np.empty(0))


@dataclass(frozen=True, slots=True, eq=False)
class FleetSnapshot:
    """Immutable, row-per-endpoint view of the fleet. Arrays are read-only."""

    endpoints: tuple[Endpoint, ...]
    waiting: FloatArray
    running: FloatArray
    kv_usage: FloatArray
    scraped_at: FloatArray
    ttft_mean_s: FloatArray
    healthy: BoolArray
    ready_since: FloatArray  # monotonic time the endpoint became ready; nan when not ready
    lora_adapters: tuple[tuple[str, ...], ...]
    version: int
    # Changes only when the set or order of endpoints changes; lets per-row side tables be reused.
    membership: tuple[str, ...]
    index: Mapping[str, int] = field(default_factory=dict)
    rows_by_model: Mapping[str, IntArray] = field(default_factory=dict)
    rows_by_pool: Mapping[str, IntArray] = field(default_factory=dict)
    # The servers' cumulative work counters (EndpointMetrics), nan where not reported.
    prompt_tokens_total: FloatArray = field(default_factory=lambda: _NO_VALUES)
    prefill_seconds_total: FloatArray = field(default_factory=lambda: _NO_VALUES)
    decode_tokens_total: FloatArray = field(default_factory=lambda: _NO_VALUES)
    decode_seconds_total: FloatArray = field(default_factory=lambda: _NO_VALUES)
    requests_total: FloatArray = field(default_factory=lambda: _NO_VALUES)

    @property
    def size(self) -> int:
        return len(self.endpoints)

    def rows_serving(self, model: str) -> IntArray:
        return self.rows_by_model.get(model, _EMPTY_ROWS)

    def age_s(self, now: float) -> FloatArray:
        """Seconds since each endpoint's last good scrape (inf if never scraped)."""
        age = now - self.scraped_at
        return np.where(np.isnan(age), np.inf, age)

    def ready_mask(self) -> BoolArray:
        return ~np.isnan(self.ready_since)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.rows_by_model)


_EMPTY_ROWS: IntArray = np.empty(0, dtype=np.intp)
_EMPTY_ROWS.setflags(write=False)


def build_snapshot(
    endpoints: Sequence[Endpoint],
    metrics: Mapping[str, EndpointMetrics],
    *,
    version: int,
    previous: FleetSnapshot | None = None,
    now: float | None = None,
) -> FleetSnapshot:
    """Build a snapshot from discovery's endpoint list and the latest scrape per address.

    ``ready_since`` is carried over from ``previous`` so slow start can tell how long an
    endpoint has been taking traffic.
    """
    now = time.monotonic() if now is None else now
    n = len(endpoints)
    waiting = np.zeros(n)
    running = np.zeros(n)
    kv_usage = np.zeros(n)
    scraped_at = np.full(n, np.nan)
    ttft = np.full(n, np.nan)
    healthy = np.zeros(n, dtype=np.bool_)
    ready_since = np.full(n, np.nan)
    counters = np.full((len(WORK_COUNTERS), n), np.nan)
    loras: list[tuple[str, ...]] = []
    by_model: dict[str, list[int]] = {}
    by_pool: dict[str, list[int]] = {}
    for row, endpoint in enumerate(endpoints):
        m = metrics.get(endpoint.address)
        loras.append(m.running_lora_adapters if m else ())
        for model in endpoint.models:
            by_model.setdefault(model, []).append(row)
        by_pool.setdefault(endpoint.pool, []).append(row)
        if m is None:
            continue
        waiting[row] = m.waiting
        running[row] = m.running
        kv_usage[row] = m.kv_usage
        scraped_at[row] = m.scraped_at
        ttft[row] = m.ttft_mean_s
        healthy[row] = m.healthy
        for i, name in enumerate(WORK_COUNTERS):
            counters[i, row] = getattr(m, name)
        if m.healthy and endpoint.discovered_ready:
            since = math.nan
            if previous is not None:
                prev_row = previous.index.get(endpoint.address)
                if prev_row is not None:
                    since = float(previous.ready_since[prev_row])
            ready_since[row] = now if math.isnan(since) else since
    membership = tuple(e.address for e in endpoints)
    if previous is not None and previous.membership == membership:
        membership = previous.membership
    return FleetSnapshot(
        endpoints=tuple(endpoints),
        waiting=_frozen(waiting),
        running=_frozen(running),
        kv_usage=_frozen(kv_usage),
        scraped_at=_frozen(scraped_at),
        ttft_mean_s=_frozen(ttft),
        healthy=_frozen(healthy),
        ready_since=_frozen(ready_since),
        lora_adapters=tuple(loras),
        version=version,
        membership=membership,
        index={e.address: i for i, e in enumerate(endpoints)},
        rows_by_model={k: _frozen(np.asarray(v, dtype=np.intp)) for k, v in by_model.items()},
        rows_by_pool={k: _frozen(np.asarray(v, dtype=np.intp)) for k, v in by_pool.items()},
        **{name: _frozen(counters[i]) for i, name in enumerate(WORK_COUNTERS)},
    )


EMPTY_SNAPSHOT = build_snapshot((), {}, version=0)


class FleetState:
    """Holds the latest snapshot. One writer (the collector), many readers (the request path)."""

    def __init__(self) -> None:
        self.snapshot: FleetSnapshot = EMPTY_SNAPSHOT
        self.synced = False  # becomes True at the first successful metrics sync
        self._listeners: list[Callable[[FleetSnapshot], None]] = []

    def publish(self, snapshot: FleetSnapshot, *, synced: bool) -> None:
        self.snapshot = snapshot
        first = synced and not self.synced
        if synced:
            self.synced = True
        if first or self._listeners:
            for listener in self._listeners:
                listener(snapshot)

    def subscribe(self, listener: Callable[[FleetSnapshot], None]) -> None:
        self._listeners.append(listener)


class InFlight:
    """Requests this process has sent to each endpoint and not yet seen answered.

    Scrapes are 50-100 ms apart; without a local count a burst between two scrapes would all
    go to whichever endpoint looked idlest. Indexed by the snapshot's row order and remapped
    only when the endpoint set changes.
    """

    def __init__(self) -> None:
        self._membership: tuple[str, ...] = ()
        self._counts: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._by_address: dict[str, int] = {}

    def counts_for(self, snapshot: FleetSnapshot) -> npt.NDArray[np.int64]:
        """In-flight requests per snapshot row, as the scheduler should see them."""
        return self._local_counts(snapshot)

    def _local_counts(self, snapshot: FleetSnapshot) -> npt.NDArray[np.int64]:
        if snapshot.membership is not self._membership and snapshot.membership != self._membership:
            remapped = np.zeros(snapshot.size, dtype=np.int64)
            for address, count in self._by_address.items():
                row = snapshot.index.get(address)
                if row is not None:
                    remapped[row] = count
            self._counts = remapped
        self._membership = snapshot.membership
        return self._counts

    def add(self, snapshot: FleetSnapshot, address: str, delta: int) -> None:
        counts = self._local_counts(snapshot)
        new = max(0, self._by_address.get(address, 0) + delta)
        if new:
            self._by_address[address] = new
        else:
            self._by_address.pop(address, None)
        row = snapshot.index.get(address)
        if row is not None:
            counts[row] = new

    def get(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def total(self) -> int:
        return sum(self._by_address.values())


def static_endpoints(addresses: Iterable[str], **attrs: object) -> list[Endpoint]:
    """Endpoints from a plain address list (tests, the local stack)."""
    return [Endpoint(address=a, **attrs) for a in addresses]  # type: ignore[arg-type]
