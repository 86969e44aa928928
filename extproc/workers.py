"""`serve --workers N`: one supervisor scrapes the fleet, N worker processes route on one port.

The supervisor runs the collector (discovery + scraping) once and publishes each snapshot to
shared memory (extproc.fleet.shared); every worker is a full ext_proc server (gRPC with
SO_REUSEPORT on the same port, its own policy reloader, health, metrics on
``metrics_port + index``) whose collector reads that block, and whose in-flight counts are
summed with the other workers'. The kernel spreads Envoy's connections over the workers; the
Envoy configs rotate ext_proc connections (max_requests_per_connection) so one long-lived
HTTP/2 connection cannot pin all traffic on one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
from dataclasses import replace
from typing import Any

from extproc.app import CollectorFactory
from extproc.config import ServerConfig
from extproc.fleet.shared import SharedFleetReader, SharedFleetWriter, SharedInFlight
from extproc.fleet.state import FleetState

log = logging.getLogger(__name__)
MAX_ENDPOINTS = 16384


def _worker(
    config: ServerConfig,
    index: int,
    fleet_block: str,
    inflight_block: str,
    policy_path: str | None,
    policy_interval_s: float,
) -> None:
    import uvloop

    from extproc.app import App
    from extproc.policy.reload import PolicyReloader

    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s worker-{index} %(levelname)s %(name)s: %(message)s"
    )
    # The supervisor owns the shutdown: Ctrl-C in a terminal reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inflight = SharedInFlight(inflight_block, config.workers, index, MAX_ENDPOINTS)
    policy = PolicyReloader(policy_path, interval_s=policy_interval_s) if policy_path else None

    def reader(fleet: FleetState) -> SharedFleetReader:
        return SharedFleetReader(fleet_block, MAX_ENDPOINTS, fleet)

    async def main() -> None:
        app = App(config, reader, policy=policy, inflight=inflight)
        await app.run_until_signalled()

    uvloop.run(main())
    inflight.close()


def serve_workers(
    config: ServerConfig,
    collector_factory: CollectorFactory,
    policy_path: str | None,
    policy_interval_s: float,
) -> int:
    writer = SharedFleetWriter(MAX_ENDPOINTS)
    inflight = SharedInFlight.create(config.workers, MAX_ENDPOINTS)
    context = multiprocessing.get_context("spawn")
    children: list[Any] = []
    for index in range(config.workers):
        worker_config = replace(
            config, metrics_port=config.metrics_port + index if config.metrics_port else 0
        )
        child = context.Process(
            target=_worker,
            args=(worker_config, index, writer.name, inflight.name, policy_path, policy_interval_s),
            name=f"llm-extproc-worker-{index}",
        )
        child.start()
        children.append(child)

    async def supervise() -> None:
        fleet = FleetState()
        fleet.subscribe(lambda snapshot: writer.publish(snapshot, fleet.synced))
        collector = collector_factory(fleet)
        await collector.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            if not all(child.is_alive() for child in children):
                log.error("a worker exited; stopping")
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        await collector.stop()

    try:
        asyncio.run(supervise())
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each worker drains within its grace period
        for child in children:
            child.join(config.shutdown_grace_s + 5)
            if child.is_alive():
                child.kill()
        writer.close()
        inflight.close()
        inflight.unlink()
    return 0 if all(child.exitcode == 0 for child in children) else 1
