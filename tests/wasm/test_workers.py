"""Envoy with two worker threads, so two filter VMs: in-flight counts reach the other worker
through shared data (each VM publishes its own and reads the others' every tick)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.wasm import harness
from tests.wasm.harness import StaticBrain, WasmEnvoy, snapshot_for, started

pytestmark = pytest.mark.envoy

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": ""}]}).encode()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WasmEnvoy, StaticBrain]]:
    yield from started(tmp_path_factory.mktemp("workers"), endpoints=2, concurrency=2, poll_ms=20)


def served_by(envoy: WasmEnvoy) -> Any:
    status, _, raw = envoy.request(CHAT, BODY)
    assert status == 200, raw
    return json.loads(raw)["endpoint"]


def test_requests_in_flight_on_one_worker_steer_the_other(two_workers: tuple[WasmEnvoy, StaticBrain]) -> None:
    envoy, brain = two_workers
    first, second = envoy.addresses
    snapshot = snapshot_for(
        envoy.addresses, candidates={"m|": {"endpoints": [[first, 1_500_000], [second, 1_000_000]]}}
    )
    snapshot["version"] = "two-workers"
    brain.snapshot = snapshot
    # Three VMs poll (the main thread's and each worker's): enough confirmations that all have it.
    wait_until(lambda: brain.confirmed.get("two-workers", 0) >= 15)
    # New connections spread over both workers (SO_REUSEPORT): all go to the better endpoint.
    assert {served_by(envoy) for _ in range(8)} == {first}
    harness.slow_started.clear()
    harness.release_slow.clear()
    slow = threading.Thread(target=envoy.request, args=(CHAT, BODY, {harness.SLOW_HEADER: "1"}))
    slow.start()
    try:
        assert harness.slow_started.wait(10)
        time.sleep(0.2)  # a few ticks: the other worker has read the count
        # Whichever worker takes each of these, it sees the request in flight at the first. (They
        # are spaced by a few ticks: a probe just answered by one worker stays in the counts the
        # other reads for up to a tick, and would make the two endpoints look equally busy.)
        probes = set()
        for _ in range(12):
            probes.add(served_by(envoy))
            time.sleep(0.08)
        assert probes == {second}
    finally:
        harness.release_slow.set()
        slow.join(10)
    wait_until(lambda: served_by(envoy) == first, 5)
