"""Collector: discovery + scraper -> FleetState, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extproc.collectors.collector import Collector, CollectorConfig, collector_from_fleet_file
from extproc.collectors.discovery import OnChange, StaticDiscovery
from extproc.fleet.state import Endpoint, FleetState
from tests.collectors.test_scraper import FakeFleet, fast_config, wait_until


@pytest.fixture
async def fake() -> AsyncIterator[FakeFleet]:
    fleet = FakeFleet()
    yield fleet
    await fleet.close()


async def test_static_collector_end_to_end(fake: FakeFleet) -> None:
    addresses = await fake.start(3)
    state = FleetState()
    published: list[int] = []
    state.subscribe(lambda snap: published.append(snap.version))
    collector = Collector(
        StaticDiscovery(Endpoint(a, models=("llama",)) for a in addresses), fast_config(), state
    )
    await collector.start()
    try:
        assert collector.running
        await wait_until(
            lambda: state.synced and bool(state.snapshot.healthy.all()) and state.snapshot.size == 3
        )
        assert list(state.snapshot.rows_serving("llama")) == [0, 1, 2]
        assert state.snapshot.running.tolist() == [12.0, 12.0, 12.0]
        assert published  # listeners saw at least the first synced snapshot
        assert collector.discovery_updates == 1
    finally:
        await collector.stop()
    assert not collector.running and not collector.scraper.running
    await collector.stop()  # idempotent


async def test_from_config_and_context_manager(fake: FakeFleet) -> None:
    addresses = await fake.start(2)
    state = FleetState()
    config = {
        "discovery": {"type": "static", "models": ["m"], "endpoints": addresses},
        "scrape": {
            "min_interval_s": 0.02,
            "max_interval_s": 0.05,
            "health_interval_s": 0.05,
            "publish_interval_s": 0.01,
        },
    }
    async with Collector.from_config(config, state) as collector:
        await wait_until(lambda: state.synced and state.snapshot.size == 2)
        assert isinstance(collector.config, CollectorConfig)
        assert state.snapshot.models == ("m",)


async def test_discovery_changes_flow_through_and_failures_restart(fake: FakeFleet) -> None:
    addresses = await fake.start(3)

    class Scripted:
        name = "scripted"

        def __init__(self) -> None:
            self.runs = 0
            self.callback: OnChange | None = None

        async def run(self, on_change: OnChange) -> None:
            self.runs += 1
            self.callback = on_change
            if self.runs == 1:
                on_change((Endpoint(addresses[0]),))
                raise RuntimeError("backend went away")
            on_change((Endpoint(addresses[1]), Endpoint(addresses[2])))
            await asyncio.Event().wait()

    source = Scripted()
    state = FleetState()
    collector = Collector(source, CollectorConfig(scrape=fast_config(), discovery_restart_s=0.01), state)
    await collector.start()
    try:
        await wait_until(lambda: state.snapshot.membership == (addresses[1], addresses[2]))
        await wait_until(lambda: bool(state.snapshot.healthy.all()) and state.synced)
        assert collector.discovery_failures == 1 and source.runs == 2
        assert source.callback is not None
        source.callback((Endpoint(addresses[2]),))
        await wait_until(lambda: state.snapshot.membership == (addresses[2],))
    finally:
        await collector.stop()


async def test_hung_endpoint_does_not_delay_collector_updates(fake: FakeFleet) -> None:
    addresses = await fake.start(2)
    fake.set(addresses[0], mode="hang")
    state = FleetState()
    collector = Collector(StaticDiscovery(Endpoint(a) for a in addresses), fast_config(timeout_s=30.0), state)
    await collector.start()
    try:
        # Wait for a published row with data (NaN until the first good scrape is published).
        await wait_until(lambda: state.snapshot.size == 2 and state.snapshot.scraped_at[1] > 0)
        row = state.snapshot.index[addresses[1]]
        seen = state.snapshot.scraped_at[row]
        for _ in range(3):
            await wait_until(lambda s=seen: state.snapshot.scraped_at[row] > s)  # type: ignore[misc]
            seen = state.snapshot.scraped_at[row]
    finally:
        await collector.stop()


async def test_collector_from_fleet_file(fake: FakeFleet, tmp_path: Path) -> None:
    addresses = await fake.start(2)
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps(
            {"endpoints": [{"address": a, "models": ["llama-3-8b"], "pool": "fast"} for a in addresses]}
        )
    )
    state = FleetState()
    collector = collector_from_fleet_file(path, state, interval_s=0.02)
    assert collector.config.scrape.min_interval_s == 0.02
    async with collector:
        await wait_until(
            lambda: state.synced and state.snapshot.size == 2 and bool(state.snapshot.healthy.all())
        )
        assert list(state.snapshot.rows_by_pool["fast"]) == [0, 1]


@pytest.mark.parametrize("source", ["fleet", "dns"])
def test_serve_flags_set_the_scrape_timing_even_above_the_default_cap(source: str, tmp_path: Path) -> None:
    from extproc import cli

    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"endpoints": [{"address": "127.0.0.1:8001", "models": ["m"]}]}))
    where = (
        ["--fleet", str(path)] if source == "fleet" else ["--discovery", "dns", "--dns-name", "vllm.local"]
    )
    args = cli.build_parser().parse_args(
        ["serve", *where, "--scrape-interval", "3", "--health-interval", "7", "--stale-after", "9"]
    )
    collector = cli._collector_factory(args)(FleetState())
    scrape = collector.config.scrape
    # 3 s was silently capped at the adaptive maximum (0.5 s) for discovered fleets.
    assert scrape.interval_for(1) == 3.0 and scrape.interval_for(100_000) >= 3.0
    assert (scrape.health_interval_s, scrape.stale_after_s) == (7.0, 9.0)
    defaults = cli._collector_factory(cli.build_parser().parse_args(["serve", *where]))(FleetState())
    assert defaults.config.scrape.interval_for(1) == 0.1
    assert (defaults.config.scrape.health_interval_s, defaults.config.scrape.stale_after_s) == (1.0, 1.0)
