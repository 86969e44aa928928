"""Wires a discovery source and the scraper to a :class:`FleetState`, with start/stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from extproc.collectors.discovery import DiscoverySource, StaticDiscovery, build_discovery
from extproc.collectors.scraper import ScrapeConfig, Scraper
from extproc.fleet.file import load_fleet_file
from extproc.fleet.state import Endpoint, FleetState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CollectorConfig:
    """The collectors' config section: ``discovery`` (see :func:`build_discovery`) + ``scrape``."""

    discovery: Mapping[str, Any] = field(default_factory=lambda: {"type": "static", "endpoints": []})
    scrape: ScrapeConfig = field(default_factory=ScrapeConfig)
    # A source whose run() raises is restarted after this long (it keeps its last set meanwhile).
    discovery_restart_s: float = 1.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CollectorConfig:
        return cls(
            discovery=dict(raw.get("discovery", {"type": "static", "endpoints": []})),
            scrape=ScrapeConfig.from_dict(raw.get("scrape", {})),
            discovery_restart_s=float(raw.get("discovery_restart_s", 1.0)),
        )


class Collector:
    """Discovery -> scraper -> ``FleetState.publish``. Everything runs on the caller's loop."""

    def __init__(
        self,
        discovery: DiscoverySource,
        config: ScrapeConfig | CollectorConfig,
        fleet: FleetState,
    ) -> None:
        if isinstance(config, CollectorConfig):
            self.config = config
        else:
            self.config = CollectorConfig(scrape=config)
        self.discovery = discovery
        self.fleet = fleet
        self.scraper = Scraper(self.config.scrape, fleet)
        self._discovery_task: asyncio.Task[None] | None = None
        self.discovery_updates = 0
        self.discovery_failures = 0

    @classmethod
    def from_config(cls, config: CollectorConfig | Mapping[str, Any], fleet: FleetState) -> Collector:
        if not isinstance(config, CollectorConfig):
            config = CollectorConfig.from_dict(config)
        return cls(build_discovery(config.discovery), config, fleet)

    @property
    def running(self) -> bool:
        return self._discovery_task is not None

    async def start(self) -> None:
        if self._discovery_task is not None:
            return
        await self.scraper.start()
        self._discovery_task = asyncio.create_task(self._run_discovery(), name="discovery")

    async def stop(self) -> None:
        task, self._discovery_task = self._discovery_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.scraper.stop()

    async def __aenter__(self) -> Collector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_change(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.discovery_updates += 1
        self.scraper.set_endpoints(endpoints)

    async def _run_discovery(self) -> None:
        while True:
            try:
                await self.discovery.run(self._on_change)
                return  # a source that finishes has nothing more to report
            except asyncio.CancelledError:
                raise
            except Exception:
                # The scraper keeps the last endpoint set; retry rather than lose discovery.
                self.discovery_failures += 1
                log.exception("discovery source %s failed; restarting", self.discovery.name)
                await asyncio.sleep(self.config.discovery_restart_s)


def scrape_timing(interval_s: float, health_interval_s: float, stale_after_s: float) -> dict[str, Any]:
    """ScrapeConfig fields for the CLI's --scrape-interval, --health-interval and --stale-after.

    The metrics period is the small-fleet period; large fleets still slow down adaptively, but
    never below what was asked (a period above the default cap is not silently capped).
    """
    return {
        "min_interval_s": interval_s,
        "max_interval_s": max(interval_s, ScrapeConfig().max_interval_s),
        "health_interval_s": health_interval_s,
        "stale_after_s": stale_after_s,
    }


def collector_from_fleet_file(
    path: Path,
    fleet: FleetState,
    *,
    interval_s: float = 0.1,
    health_interval_s: float = 1.0,
    stale_after_s: float = 1.0,
    preset: str = "vllm",
    health_path: str | None = "/health",
) -> Collector:
    """``llm-extproc serve --fleet FILE``: static discovery from a fleet file, scraped.

    ``interval_s`` is the per-endpoint period for small fleets; large fleets still slow down
    adaptively (see ScrapeConfig). The file is read once here, at start-up, before the loop
    serves anything.
    """
    endpoints = load_fleet_file(path)
    scrape = replace(
        ScrapeConfig(preset=preset, health_path=health_path),
        **scrape_timing(interval_s, health_interval_s, stale_after_s),
    )
    return Collector(StaticDiscovery(endpoints), scrape, fleet)
