"""Shared fleet view for worker processes: the snapshot block and the summed in-flight counts."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from extproc.fleet.shared import SharedFleetReader, SharedFleetWriter, SharedInFlight
from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, build_snapshot

MAX = 64


def snapshot(addresses: list[str], waiting: float, version: int):  # type: ignore[no-untyped-def]
    endpoints = [
        Endpoint(a, pool="fast", models=("m", "n"), gpu_class="a100", zone="z1", node=f"node-{a}")
        for a in addresses
    ]
    metrics = {
        a: EndpointMetrics(waiting=waiting + i, running=2.0, kv_usage=0.5, scraped_at=10.0, healthy=True)
        for i, a in enumerate(addresses)
    }
    return build_snapshot(endpoints, metrics, version=version, now=5.0)


@pytest.fixture
def writer() -> Iterator[SharedFleetWriter]:
    block = SharedFleetWriter(MAX)
    yield block
    block.close()


async def test_a_worker_sees_what_the_supervisor_published(writer: SharedFleetWriter) -> None:
    fleet = FleetState()
    reader = SharedFleetReader(writer.name, MAX, fleet)
    try:
        assert not reader.poll() and not fleet.synced  # nothing published yet
        published = snapshot(["10.0.0.1:8000", "10.0.0.2:8000"], waiting=3.0, version=7)
        writer.publish(published, synced=True)
        assert reader.poll() and fleet.synced
        seen = fleet.snapshot
        assert seen.endpoints == published.endpoints and seen.version == 7
        assert np.array_equal(seen.waiting, published.waiting) and np.array_equal(
            seen.kv_usage, published.kv_usage
        )
        assert list(seen.rows_serving("n")) == [0, 1]
        assert not reader.poll()  # unchanged block: no new snapshot
        # Membership changes travel too.
        writer.publish(snapshot(["10.0.0.3:8000"], waiting=1.0, version=8), synced=True)
        assert reader.poll() and fleet.snapshot.membership == ("10.0.0.3:8000",)
    finally:
        await reader.stop()


def test_in_flight_counts_are_summed_over_workers() -> None:
    shm = SharedInFlight.create(workers=2, max_endpoints=MAX)
    first = SharedInFlight(shm.name, 2, 0, MAX)
    second = SharedInFlight(shm.name, 2, 1, MAX)
    try:
        snap = snapshot(["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"], waiting=0.0, version=1)
        first.add(snap, "10.0.0.1:8000", +1)
        first.add(snap, "10.0.0.1:8000", +1)
        second.add(snap, "10.0.0.1:8000", +1)
        second.add(snap, "10.0.0.3:8000", +1)
        assert list(first.counts_for(snap)) == [3, 0, 1]
        assert list(second.counts_for(snap)) == [3, 0, 1]
        second.add(snap, "10.0.0.1:8000", -1)
        assert list(first.counts_for(snap)) == [2, 0, 1]
        # A new membership order: each worker rewrites its row, nothing stale stays behind.
        reordered = snapshot(["10.0.0.3:8000", "10.0.0.1:8000"], waiting=0.0, version=2)
        second.counts_for(reordered)
        assert list(first.counts_for(reordered)) == [1, 2]
    finally:
        first.close()
        second.close()
        shm.close()
        shm.unlink()
