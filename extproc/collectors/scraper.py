"""Polls every endpoint's ``/metrics`` (and ``/health``) and publishes fleet snapshots.

Runs on the server's event loop beside the request path, so everything here is
non-blocking and cheap per scrape: one shared ``aiohttp.ClientSession`` with keep-alive, a
targeted parser (:mod:`extproc.collectors.promparse`), and one small task per endpoint. Each endpoint has
its own timer, phase-shifted by a hash of its address so a thousand endpoints are spread over
the interval instead of firing together; a hung or huge ``/metrics`` only ever costs its own
task a timeout, never another endpoint's update.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import aiohttp
import numpy as np

from extproc.collectors.promparse import PRESETS, MetricMapping, TargetedParser
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetSnapshot, FleetState, build_snapshot

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ScrapeConfig:
    """How the scraper polls. Times are seconds."""

    # Per-endpoint metrics period is adaptive: small fleets are polled every ``min_interval_s``;
    # once ``fleet_size / target_scrapes_per_s`` exceeds that, the period grows with the fleet
    # (capped at ``max_interval_s``) so the scraper's CPU stays bounded on a shared loop.
    min_interval_s: float = 0.05
    max_interval_s: float = 0.5
    target_scrapes_per_s: float = 2000.0
    timeout_s: float = 0.5
    health_interval_s: float = 1.0
    health_timeout_s: float = 0.5
    # Consecutive /health failures before an endpoint is unhealthy (no traffic).
    unhealthy_after_failures: int = 1
    # Data older than this is stale: the picker should treat the row conservatively.
    stale_after_s: float = 1.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrency: int = 256
    # Snapshots are coalesced: at most one per this many seconds (and at most five per
    # metrics period, so a 1,000-endpoint fleet does not rebuild its arrays 50 times a second).
    publish_interval_s: float = 0.02
    scheme: str = "http"
    metrics_path: str = "/metrics"
    health_path: str | None = "/health"
    preset: str = "vllm"
    # Replaces the preset entirely when set.
    mapping: MetricMapping | None = None

    def metric_mapping(self) -> MetricMapping:
        if self.mapping is not None:
            return self.mapping
        try:
            return PRESETS[self.preset]
        except KeyError:
            raise ValueError(f"unknown metrics preset {self.preset!r}; known: {sorted(PRESETS)}") from None

    def interval_for(self, fleet_size: int) -> float:
        wanted = fleet_size / self.target_scrapes_per_s if self.target_scrapes_per_s > 0 else 0.0
        return min(self.max_interval_s, max(self.min_interval_s, wanted))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ScrapeConfig:
        """From a config file section; ``mapping`` may be a dict of MetricMapping overrides."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown scrape config keys: {sorted(unknown)}")
        values = dict(raw)
        mapping = values.pop("mapping", None)
        config = cls(**values)
        if isinstance(mapping, Mapping):
            config.mapping = replace(config.metric_mapping(), **mapping)
        elif mapping is not None:
            config.mapping = mapping
        config.metric_mapping()  # validate the preset now, not at the first scrape
        return config


@dataclass(slots=True)
class EndpointStats:
    """Plain counters the metrics module can export (no Prometheus objects here)."""

    scrapes_ok: int = 0
    scrapes_failed: int = 0
    health_ok: int = 0
    health_failed: int = 0
    last_duration_s: float = math.nan
    last_error: str = ""
    consecutive_failures: int = 0


class ScrapeError(Exception):
    """A scrape that produced no usable data; ``kind`` is a short label for counters."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(slots=True, eq=False)
class _Target:
    endpoint: Endpoint
    metrics_url: str
    health_url: str | None
    phase: float  # in [0, 1): where in each period this endpoint fires
    stats: EndpointStats = field(default_factory=EndpointStats)
    last_good: EndpointMetrics | None = None
    healthy: bool = True
    health_failures: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _phase(address: str) -> float:
    # Stable across restarts and processes (unlike hash()), so replicas spread the same way.
    return (zlib.crc32(address.encode()) & 0xFFFFFFFF) / 2**32


class Scraper:
    """Owns the HTTP session, the per-endpoint tasks and snapshot publication."""

    def __init__(self, config: ScrapeConfig, fleet: FleetState) -> None:
        self.config = config
        self.fleet = fleet
        self._parser = TargetedParser(config.metric_mapping())
        self._targets: dict[str, _Target] = {}
        self._endpoints: tuple[Endpoint, ...] = ()
        self._metrics: dict[str, EndpointMetrics] = {}
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._metrics_timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._health_timeout = aiohttp.ClientTimeout(total=config.health_timeout_s)
        self._dirty = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._interval = config.interval_for(0)
        self._version = 0
        # Addresses not yet attempted in the first round; sync needs it empty plus one success.
        self._first_round_pending: set[str] = set()
        self._synced = False
        self._any_ok = False
        # Fleet-wide counters, read by the metrics module.
        self.stats: dict[str, EndpointStats] = {}
        self.scrapes_ok_total = 0
        self.scrapes_failed_total = 0
        self.publishes_total = 0
        self.last_publish_duration_s = math.nan

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._session is not None

    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.config.max_concurrency,
            limit_per_host=0,
            keepalive_timeout=30.0,
            # Endpoints are IPs from discovery; no DNS cache churn on the loop.
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            # Metrics pages are trusted-format text; skip cookie bookkeeping.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        for target in self._targets.values():
            self._start_target(target)
        self._publisher = asyncio.create_task(self._publish_loop(), name="scraper-publish")
        self._dirty.set()

    async def stop(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        for target in self._targets.values():
            tasks.extend(target.tasks)
            target.tasks.clear()
        if self._publisher is not None:
            tasks.append(self._publisher)
            self._publisher = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- membership --------------------------------------------------------------------------

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Discovery's callback: the full current endpoint set (order is kept in snapshots)."""
        unique: dict[str, Endpoint] = {}
        for endpoint in endpoints:
            unique.setdefault(endpoint.address, endpoint)
        new = tuple(unique.values())
        for address in list(self._targets):
            if address not in unique:
                target = self._targets.pop(address)
                for task in target.tasks:
                    task.cancel()
                self._metrics.pop(address, None)
                self.stats.pop(address, None)
                self._first_round_pending.discard(address)
        for address, endpoint in unique.items():
            existing = self._targets.get(address)
            if existing is not None:
                existing.endpoint = endpoint
                continue
            target = self._make_target(endpoint)
            self._targets[address] = target
            self.stats[address] = target.stats
            if not self._synced:
                self._first_round_pending.add(address)
            if self._session is not None:
                self._start_target(target)
        self._endpoints = new
        self._interval = self.config.interval_for(len(new))
        self._maybe_synced()
        self._dirty.set()

    def _make_target(self, endpoint: Endpoint) -> _Target:
        base = f"{self.config.scheme}://{endpoint.address}"
        health = self.config.health_path
        return _Target(
            endpoint=endpoint,
            metrics_url=base + self.config.metrics_path,
            health_url=base + health if health else None,
            phase=_phase(endpoint.address),
            # A model server may serve /metrics while still loading weights: no traffic
            # until its first /health check passes.
            healthy=not health,
        )

    def _start_target(self, target: _Target) -> None:
        address = target.endpoint.address
        target.tasks.append(asyncio.create_task(self._scrape_loop(target), name=f"scrape {address}"))
        if target.health_url is not None:
            target.tasks.append(asyncio.create_task(self._health_loop(target), name=f"health {address}"))

    # -- scraping ----------------------------------------------------------------------------

    async def _scrape_loop(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(target.phase * self._interval)
        while True:
            started = loop.time()
            await self.scrape_once(target.endpoint.address)
            # Fixed cadence from the start time; a slow scrape eats into the wait, never stacks.
            await asyncio.sleep(max(0.0, started + self._interval - loop.time()))

    async def scrape_once(self, address: str) -> bool:
        """Scrape one endpoint now; True when it produced fresh data."""
        target = self._targets.get(address)
        if target is None or self._session is None:
            return False
        stats = target.stats
        started = time.monotonic()
        try:
            async with self._semaphore:
                body = await self._get(target.metrics_url, self._metrics_timeout)
            values = self._parser.parse(body.decode("utf-8", "replace"))
            if values.series_found == 0:
                raise ScrapeError("no_series", "no mapped series on the page")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure mode is counted; none may escape
            now = time.monotonic()
            stats.scrapes_failed += 1
            stats.consecutive_failures += 1
            stats.last_duration_s = now - started
            stats.last_error = _error_kind(exc)
            self.scrapes_failed_total += 1
            self._round_done(address, ok=False)
            return False
        now = time.monotonic()
        if self._targets.get(address) is not target:
            return False  # removed while we were waiting on the network
        metrics = values.to_endpoint_metrics(scraped_at=now, healthy=target.healthy)
        target.last_good = metrics
        self._metrics[address] = metrics
        stats.scrapes_ok += 1
        stats.consecutive_failures = 0
        stats.last_duration_s = now - started
        stats.last_error = ""
        self.scrapes_ok_total += 1
        self._round_done(address, ok=True)
        self._dirty.set()
        return True

    async def _get(self, url: str, timeout: aiohttp.ClientTimeout) -> bytes:
        assert self._session is not None
        limit = self.config.max_body_bytes
        async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise ScrapeError("status", str(response.status))
            if response.content_length is not None and response.content_length > limit:
                raise ScrapeError("too_large", f"content-length {response.content_length}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > limit:
                    # Stop reading; closing the response drops the connection, which is what
                    # we want for a server that streams unbounded output.
                    raise ScrapeError("too_large", f"> {limit} bytes")
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _round_done(self, address: str, *, ok: bool) -> None:
        if self._synced:
            return
        self._first_round_pending.discard(address)
        if ok:
            self._any_ok = True
        self._maybe_synced()

    def _maybe_synced(self) -> None:
        if not self._synced and self._any_ok and not self._first_round_pending:
            self._synced = True
            self._dirty.set()

    # -- health ------------------------------------------------------------------------------

    async def _health_loop(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.health_interval_s
        # Check a new endpoint at once (it gets no traffic before), then settle into its phase.
        await self.check_health_once(target.endpoint.address)
        await asyncio.sleep(target.phase * period)
        while True:
            started = loop.time()
            await self.check_health_once(target.endpoint.address)
            await asyncio.sleep(max(0.0, started + period - loop.time()))

    async def check_health_once(self, address: str) -> bool:
        target = self._targets.get(address)
        if target is None or target.health_url is None or self._session is None:
            return False
        try:
            async with self._semaphore:
                await self._get(target.health_url, self._health_timeout)
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure means "unhealthy"
            ok = False
        if self._targets.get(address) is not target:
            return ok
        if ok:
            target.stats.health_ok += 1
            target.health_failures = 0
            healthy = True
        else:
            target.stats.health_failed += 1
            target.health_failures += 1
            healthy = target.health_failures < self.config.unhealthy_after_failures and target.healthy
        if healthy != target.healthy:
            target.healthy = healthy
            if target.last_good is not None:
                target.last_good = replace(target.last_good, healthy=healthy)
                self._metrics[address] = target.last_good
            elif healthy:
                self._metrics.pop(address, None)
            else:
                # Never scraped: still record "unhealthy" so the row shows it.
                self._metrics[address] = EndpointMetrics(healthy=False)
            self._dirty.set()
        return ok

    # -- publication -------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self.publish_now()
            await asyncio.sleep(max(self.config.publish_interval_s, self._interval / 5))

    def publish_now(self) -> FleetSnapshot:
        started = time.perf_counter()
        self._version += 1
        snapshot = build_snapshot(
            self._endpoints, self._metrics, version=self._version, previous=self.fleet.snapshot
        )
        self.fleet.publish(snapshot, synced=self._synced)
        self.publishes_total += 1
        self.last_publish_duration_s = time.perf_counter() - started
        return snapshot

    def latest_metrics(self) -> dict[str, EndpointMetrics]:
        """A copy of the latest data per address (tests, debugging)."""
        return dict(self._metrics)

    def is_stale(self, address: str, now: float | None = None) -> bool:
        metrics = self._metrics.get(address)
        if metrics is None or math.isnan(metrics.scraped_at):
            return True
        now = time.monotonic() if now is None else now
        return now - metrics.scraped_at > self.config.stale_after_s


def stale_mask(
    snapshot: FleetSnapshot, stale_after_s: float, now: float | None = None
) -> np.ndarray[Any, Any]:
    """Rows whose last good scrape is older than ``stale_after_s`` (or that were never scraped)."""
    now = time.monotonic() if now is None else now
    result: np.ndarray[Any, Any] = snapshot.age_s(now) > stale_after_s
    return result


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, ScrapeError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connect"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "protocol"
    return type(exc).__name__
