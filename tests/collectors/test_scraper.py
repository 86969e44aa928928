"""The scraper against real aiohttp servers on loopback (recorded pages, hung, garbage, huge)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from extproc.collectors.scraper import ScrapeConfig, Scraper, stale_mask
from extproc.fleet.state import Endpoint, FleetState

DATA = Path(__file__).parents[1] / "data"
# Recorded model-server pages, shipped for the parser benchmark.
SAMPLES = Path(__file__).parents[2] / "extproc" / "bench" / "data"
VLLM_PAGE = (SAMPLES / "vllm_metrics_two_engines.txt").read_text()


class FakeFleet:
    """One aiohttp app listening on many loopback ports; each port is one endpoint.

    ``modes[port]``: "ok" (serve ``pages[port]``), "hang" (never answer until shutdown),
    "garbage", "huge" (streams more than any sane cap), "huge_cl" (declares a huge length),
    "500". ``health[port]``: True answers 200 on /health, False answers 503.
    """

    def __init__(self) -> None:
        self.modes: dict[int, str] = {}
        self.pages: dict[int, str] = {}
        self.health: dict[int, bool] = {}
        self.hits: dict[int, int] = {}
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)

    async def start(self, count: int) -> list[str]:
        await self._runner.setup()
        addresses = []
        for _ in range(count):
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.modes[port] = "ok"
            self.pages[port] = VLLM_PAGE
            self.health[port] = True
            addresses.append(f"127.0.0.1:{port}")
        return addresses

    async def close(self) -> None:
        self._release.set()
        await self._runner.cleanup()

    @staticmethod
    def port_of(address: str) -> int:
        return int(address.rsplit(":", 1)[1])

    def set(
        self, address: str, mode: str | None = None, page: str | None = None, healthy: bool | None = None
    ) -> None:
        port = self.port_of(address)
        if mode is not None:
            self.modes[port] = mode
        if page is not None:
            self.pages[port] = page
        if healthy is not None:
            self.health[port] = healthy

    @staticmethod
    def _port(request: web.Request) -> int:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return int(sockname[1]) if sockname else 0

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        port = self._port(request)
        self.hits[port] = self.hits.get(port, 0) + 1
        mode = self.modes.get(port, "ok")
        if mode == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if mode == "garbage":
            return web.Response(body=b"\x00\xff<html>not metrics</html>\n" * 50)
        if mode == "500":
            return web.Response(status=500, text="boom")
        if mode == "huge_cl":
            return web.Response(body=b"#" * (3 * 1024 * 1024))
        if mode == "huge":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = b"# padding line that never ends\n" * 2048
            try:
                for _ in range(200):  # ~12 MiB unless the client hangs up first
                    await response.write(chunk)
            except (ConnectionError, RuntimeError):
                pass
            return response
        return web.Response(text=self.pages.get(port, VLLM_PAGE), content_type="text/plain")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.health.get(self._port(request), True) else 503)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition; bounded so a broken scraper fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def fast_config(**overrides: object) -> ScrapeConfig:
    config = ScrapeConfig(
        min_interval_s=0.02,
        max_interval_s=0.05,
        timeout_s=1.0,
        health_interval_s=0.05,
        health_timeout_s=0.5,
        stale_after_s=0.3,
        publish_interval_s=0.01,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
async def fake() -> AsyncIterator[FakeFleet]:
    fleet = FakeFleet()
    yield fleet
    await fleet.close()


async def running_scraper(config: ScrapeConfig, addresses: list[str]) -> tuple[Scraper, FleetState]:
    state = FleetState()
    scraper = Scraper(config, state)
    scraper.set_endpoints(Endpoint(a, models=("llama",)) for a in addresses)
    await scraper.start()
    return scraper, state


async def test_scrapes_publish_values_and_sync(fake: FakeFleet) -> None:
    addresses = await fake.start(3)
    scraper, state = await running_scraper(fast_config(), addresses)
    try:
        await wait_until(lambda: state.synced and state.snapshot.size == 3 and state.snapshot.healthy.all())
        snap = state.snapshot
        assert snap.waiting.tolist() == [3.0] * 3
        assert snap.running.tolist() == [12.0] * 3
        assert snap.kv_usage.tolist() == [0.4125] * 3
        assert snap.lora_adapters[0] == ("sql-lora", "chat-lora")
        assert not math.isnan(snap.ttft_mean_s[0])
        assert snap.ready_mask().all()
        # Scrapes keep coming: a later snapshot carries newer data for every row.
        first = snap.scraped_at.copy()
        await wait_until(lambda: bool((state.snapshot.scraped_at > first).all()))
        assert state.snapshot.version > snap.version
        stats = scraper.stats[addresses[0]]
        assert stats.scrapes_ok >= 2 and stats.scrapes_failed == 0 and stats.last_duration_s > 0
        # Values follow the page.
        fake.set(
            addresses[1],
            page=VLLM_PAGE.replace(
                'vllm:num_requests_waiting{engine="0"', 'vllm:num_requests_waiting{engine="9"'
            ).replace(
                '{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0',
                '{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 40.0',
            ),
        )
        await wait_until(lambda: state.snapshot.waiting[1] == 43.0)
    finally:
        await scraper.stop()


async def test_hung_endpoint_does_not_delay_others(fake: FakeFleet) -> None:
    addresses = await fake.start(2)
    hung, ok = addresses
    fake.set(hung, mode="hang")
    # A timeout far longer than the interval: while the hung request is outstanding, the other
    # endpoint must keep being scraped and published.
    scraper, state = await running_scraper(fast_config(timeout_s=30.0), addresses)
    try:
        await wait_until(lambda: fake.hits.get(fake.port_of(hung), 0) >= 1)
        await wait_until(lambda: scraper.stats[ok].scrapes_ok >= 5)
        row = state.snapshot.index[ok]
        before = state.snapshot.scraped_at[row]
        await wait_until(lambda: state.snapshot.scraped_at[state.snapshot.index[ok]] > before)
        hung_stats = scraper.stats[hung]
        assert hung_stats.scrapes_ok == 0 and hung_stats.scrapes_failed == 0  # still waiting
        assert fake.hits[fake.port_of(hung)] == 1  # one outstanding request, never stacked
        # No sync yet: the first round has not finished (the hung endpoint is unanswered).
        assert not state.synced
    finally:
        await scraper.stop()


async def test_timeout_counts_and_ages_last_good_data(fake: FakeFleet) -> None:
    addresses = await fake.start(2)
    flaky, ok = addresses
    scraper, state = await running_scraper(fast_config(timeout_s=0.2), addresses)
    try:
        await wait_until(lambda: state.synced and bool(state.snapshot.healthy.all()))
        fake.set(flaky, mode="hang")
        await wait_until(lambda: scraper.stats[flaky].last_error == "timeout")
        # Last good values stay; only their age grows, until they count as stale.
        row = state.snapshot.index[flaky]
        assert state.snapshot.running[row] == 12.0
        await wait_until(lambda: scraper.is_stale(flaky))
        assert not scraper.is_stale(ok)
        mask = stale_mask(state.snapshot, scraper.config.stale_after_s)
        assert mask[state.snapshot.index[flaky]] and not mask[state.snapshot.index[ok]]
        # Recovery: fresh data again.
        fake.set(flaky, mode="ok")
        await wait_until(lambda: not scraper.is_stale(flaky))
    finally:
        await scraper.stop()


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("garbage", "no_series"), ("huge", "too_large"), ("huge_cl", "too_large"), ("500", "status")],
)
async def test_bad_pages_are_errors(fake: FakeFleet, mode: str, kind: str) -> None:
    addresses = await fake.start(2)
    bad, ok = addresses
    fake.set(bad, mode=mode)
    scraper, state = await running_scraper(fast_config(max_body_bytes=1024 * 1024), addresses)
    try:
        await wait_until(lambda: scraper.stats[bad].scrapes_failed >= 2 and scraper.stats[ok].scrapes_ok >= 2)
        assert scraper.stats[bad].last_error == kind
        assert scraper.stats[bad].scrapes_ok == 0
        snap = state.snapshot
        bad_row, ok_row = snap.index[bad], snap.index[ok]
        # Never scraped successfully: no data, not routable; the other endpoint is fine.
        assert math.isnan(snap.scraped_at[bad_row]) and not snap.healthy[bad_row]
        assert snap.healthy[ok_row] and snap.running[ok_row] == 12.0
        assert state.synced  # the round finished and one endpoint succeeded
        assert scraper.scrapes_failed_total >= 2
    finally:
        await scraper.stop()


async def test_health_failure_marks_unhealthy_and_recovers(fake: FakeFleet) -> None:
    addresses = await fake.start(2)
    sick, ok = addresses
    scraper, state = await running_scraper(fast_config(), addresses)
    try:
        await wait_until(lambda: state.synced and bool(state.snapshot.healthy.all()))
        fake.set(sick, healthy=False)
        await wait_until(lambda: not state.snapshot.healthy[state.snapshot.index[sick]])
        snap = state.snapshot
        assert not snap.ready_mask()[snap.index[sick]] and snap.ready_mask()[snap.index[ok]]
        # Metrics keep flowing for the unhealthy endpoint but do not make it healthy.
        count = scraper.stats[sick].scrapes_ok
        await wait_until(lambda: scraper.stats[sick].scrapes_ok > count + 1)
        assert not state.snapshot.healthy[state.snapshot.index[sick]]
        assert scraper.stats[sick].health_failed >= 1
        fake.set(sick, healthy=True)
        await wait_until(lambda: bool(state.snapshot.healthy[state.snapshot.index[sick]]))
    finally:
        await scraper.stop()


async def test_health_threshold_counts_consecutive_failures(fake: FakeFleet) -> None:
    addresses = await fake.start(1)
    scraper, state = await running_scraper(fast_config(unhealthy_after_failures=3), addresses)
    try:
        await wait_until(lambda: state.synced)
        fake.set(addresses[0], healthy=False)
        await wait_until(lambda: not state.snapshot.healthy[0])
        assert scraper.stats[addresses[0]].health_failed >= 3
    finally:
        await scraper.stop()


async def test_membership_changes(fake: FakeFleet) -> None:
    addresses = await fake.start(3)
    scraper, state = await running_scraper(fast_config(), addresses[:2])
    try:
        await wait_until(lambda: state.synced and state.snapshot.size == 2)
        scraper.set_endpoints([Endpoint(addresses[1]), Endpoint(addresses[2])])
        await wait_until(lambda: state.snapshot.membership == (addresses[1], addresses[2]))
        await wait_until(lambda: bool(state.snapshot.healthy.all()))
        assert addresses[0] not in scraper.stats
        # Discovery may flip readiness (terminating) without changing the address.
        scraper.set_endpoints([Endpoint(addresses[1], discovered_ready=False), Endpoint(addresses[2])])
        await wait_until(lambda: not state.snapshot.ready_mask()[0])
        assert state.snapshot.ready_mask()[1]
    finally:
        await scraper.stop()


async def test_no_success_means_not_synced(fake: FakeFleet) -> None:
    addresses = await fake.start(2)
    for address in addresses:
        fake.set(address, mode="500")
    scraper, state = await running_scraper(fast_config(), addresses)
    try:
        await wait_until(lambda: all(scraper.stats[a].scrapes_failed >= 2 for a in addresses))
        assert not state.synced and not scraper.synced
        fake.set(addresses[0], mode="ok")
        await wait_until(lambda: state.synced)
    finally:
        await scraper.stop()


async def test_connection_refused_is_counted() -> None:
    state = FleetState()
    scraper = Scraper(fast_config(), state)
    scraper.set_endpoints([Endpoint("127.0.0.1:1")])
    await scraper.start()
    try:
        await wait_until(lambda: scraper.stats["127.0.0.1:1"].scrapes_failed >= 1)
        assert scraper.stats["127.0.0.1:1"].last_error == "connect"
        await wait_until(lambda: not state.snapshot.healthy[0] and state.snapshot.size == 1)
    finally:
        await scraper.stop()
    assert not scraper.running


def test_adaptive_interval_and_config() -> None:
    config = ScrapeConfig()
    assert config.interval_for(1) == config.min_interval_s == 0.05
    assert config.interval_for(100) == 0.05
    assert config.interval_for(200) == pytest.approx(0.1)
    assert config.interval_for(100_000) == config.max_interval_s
    parsed = ScrapeConfig.from_dict({"timeout_s": 0.3, "preset": "sglang", "mapping": {"waiting": "x"}})
    assert parsed.timeout_s == 0.3 and parsed.metric_mapping().waiting == "x"
    assert parsed.metric_mapping().running == "sglang:num_running_reqs"
    with pytest.raises(ValueError, match="unknown scrape config"):
        ScrapeConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown metrics preset"):
        ScrapeConfig.from_dict({"preset": "bogus"})
