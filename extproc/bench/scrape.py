"""Scrape 1,000 endpoints on loopback and measure the scraper's CPU cost and achieved rate.

    python -m extproc.bench.scrape [--endpoints 1000] [--seconds 10]

A child process serves the recorded 533-line vLLM page on one loopback port per endpoint
(one aiohttp app, many listeners); this process runs the real :class:`Scraper` (uvloop when
installed, as the server does) and reports ``time.process_time()`` seconds per wall second
spent by this process only, the per-endpoint scrape rate achieved, failures, and the publish
rate. Writes docs/bench/scrape.json. Bounded: about ``--seconds`` plus start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from extproc.collectors.scraper import ScrapeConfig, Scraper
from extproc.fleet.state import Endpoint, FleetState

PAGE = (resources.files("extproc.bench") / "data" / "vllm_metrics_two_engines.txt").read_bytes()


def _loop_factory() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep the bench usable
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(count: int) -> None:
    """Child process: ``count`` listeners, print the ports, serve until stdin closes."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/plain")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    ports = []
    for _ in range(count):
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=64)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin to stop us
    await runner.cleanup()


async def measure(ports: list[int], seconds: float, config: ScrapeConfig) -> dict[str, object]:
    state = FleetState()
    scraper = Scraper(config, state)
    scraper.set_endpoints(Endpoint(f"127.0.0.1:{p}", models=("llama",)) for p in ports)
    await scraper.start()
    try:
        deadline = time.monotonic() + 15
        while not state.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let every endpoint's phase come round once
        ok0, failed0, pub0 = scraper.scrapes_ok_total, scraper.scrapes_failed_total, scraper.publishes_total
        wall0, cpu0 = time.monotonic(), time.process_time()
        await asyncio.sleep(seconds)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        ok = scraper.scrapes_ok_total - ok0
        failed = scraper.scrapes_failed_total - failed0
        publishes = scraper.publishes_total - pub0
        now = time.monotonic()
        ages = state.snapshot.age_s(now)
        return {
            "endpoints": len(ports),
            "interval_s": scraper.interval_s,
            "target_hz": round(1 / scraper.interval_s, 2),
            "achieved_hz_per_endpoint": round(ok / len(ports) / wall, 2),
            "scrapes_ok": ok,
            "scrapes_failed": failed,
            "cpu_s_per_s": round(cpu / wall, 3),
            "cpu_us_per_scrape": round(cpu / max(ok, 1) * 1e6, 1),
            "publishes_per_s": round(publishes / wall, 1),
            "last_publish_ms": round(scraper.last_publish_duration_s * 1e3, 2),
            "max_data_age_s": round(float(ages.max()), 3),
            "synced": state.synced,
            "window_s": round(wall, 2),
        }
    finally:
        await scraper.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extproc.bench.scrape")
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", default="docs/bench/scrape.json")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _loop_factory()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    child = subprocess.Popen(
        [sys.executable, "-m", "extproc.bench.scrape", "--serve", str(args.endpoints)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        # The default config: 1,000 endpoints -> 0.5 s period (2 Hz), health every 1 s.
        result = asyncio.run(measure(ports, args.seconds, ScrapeConfig()))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    report = {
        "command": f"python -m extproc.bench.scrape --endpoints {args.endpoints} --seconds {args.seconds:g}",
        "page_bytes": len(PAGE),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "result": result,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
