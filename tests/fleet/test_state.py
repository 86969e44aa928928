from __future__ import annotations

import math

import numpy as np
import pytest

from extproc.fleet.state import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot

A, B, C = (Endpoint(f"127.0.0.1:{p}", models=("m",)) for p in (8001, 8002, 8003))


def test_snapshot_arrays_are_read_only_and_indexed() -> None:
    snap = build_snapshot(
        [A, B], {A.address: EndpointMetrics(waiting=3, scraped_at=10.0)}, version=1, now=10.0
    )
    assert snap.index == {A.address: 0, B.address: 1}
    assert list(snap.rows_serving("m")) == [0, 1]
    assert snap.rows_serving("other").size == 0
    with pytest.raises(ValueError):
        snap.waiting[0] = 1
    # B was never scraped: not ready, infinitely stale.
    assert snap.ready_mask().tolist() == [True, False]
    assert snap.age_s(12.0).tolist() == [2.0, math.inf]


def test_ready_since_carries_over_and_unhealthy_is_not_ready() -> None:
    first = build_snapshot([A], {A.address: EndpointMetrics(scraped_at=1.0)}, version=1, now=1.0)
    second = build_snapshot(
        [A, B], {A.address: EndpointMetrics(scraped_at=2.0)}, version=2, previous=first, now=2.0
    )
    assert second.ready_since[0] == 1.0
    sick = build_snapshot(
        [A], {A.address: EndpointMetrics(healthy=False, scraped_at=3.0)}, version=3, previous=second, now=3.0
    )
    assert np.isnan(sick.ready_since[0])
    not_ready = Endpoint(A.address, models=("m",), discovered_ready=False)
    assert np.isnan(build_snapshot([not_ready], {A.address: EndpointMetrics()}, version=4).ready_since[0])


def test_inflight_survives_membership_changes() -> None:
    inflight = InFlight()
    s1 = build_snapshot([A, B], {}, version=1)
    inflight.add(s1, B.address, +1)
    inflight.add(s1, B.address, +1)
    assert inflight.counts_for(s1).tolist() == [0, 2]
    s2 = build_snapshot([C, B], {}, version=2)
    assert inflight.counts_for(s2).tolist() == [0, 2]
    inflight.add(s2, B.address, -1)
    inflight.add(s2, B.address, -5)  # never negative
    assert inflight.get(B.address) == 0 and inflight.total() == 0


def test_fleet_state_reports_first_sync_to_listeners() -> None:
    state = FleetState()
    seen = []
    state.subscribe(lambda s: seen.append(s.version))
    snap = build_snapshot([A], {}, version=1)
    state.publish(snap, synced=False)
    assert not state.synced
    state.publish(build_snapshot([A], {}, version=2), synced=True)
    assert state.synced and state.snapshot.version == 2
    assert seen == [1, 2]
