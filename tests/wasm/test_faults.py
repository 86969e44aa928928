"""The reliability suite's fault tests on the Wasm data path (tests/integration/test_faults.py
runs them on the ext_proc path): an endpoint crash under load, an endpoint answering errors."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ext_proc_counter, started_stack
from tests.integration.test_envoy import sim_control
from tests.integration.test_faults import ERRORS, Load, chat, post

pytestmark = pytest.mark.envoy


def test_endpoint_crash_under_load_fails_no_unary_request() -> None:
    ERRORS.clear()
    local = started_stack(time_scale=0.2, data_path="wasm")
    try:
        victim = local.fleet[0]["address"]
        with Load(lambda: post(local, chat())[0], workers=4) as load:
            load.wait_for(60)
            sim_control(victim, {"crash": True})
            load.wait_for(200)
        # Envoy's retries walk the filter's list past the dead endpoint; a response already on
        # the wire when it died can only end as a cut connection (as on the ext_proc path).
        cut = sum(
            1
            for e in ERRORS
            if any(k in e for k in ("RemoteDisconnected", "IncompleteRead", "ConnectionReset"))
        )
        assert load.failures() - cut == 0 and cut <= 1, load.summary()
    finally:
        local.stop()


def test_an_endpoint_answering_errors_stops_getting_traffic() -> None:
    """Passive health hears the statuses from the filter's batched reports (one per second), so
    the failing endpoint is ejected within a couple of batches rather than after three errors."""
    local = started_stack(data_path="wasm")
    try:
        # Sequential requests go where the scores and affinity say: fail the busiest endpoint.
        served: dict[str, int] = {}
        for i in range(12):
            status, headers = post(local, chat(user=f"u{i}"))
            assert status == 200
            address = headers["x-gateway-destination-endpoint-served"]
            served[address] = served.get(address, 0) + 1
        victim = max(served, key=lambda a: served[a])
        sim_control(victim, {"error_rate": 1.0})
        statuses: list[int] = []
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and ext_proc_counter(local, "llm_extproc_endpoint_ejections_total") < 1
        ):
            statuses.append(post(local, chat(user=f"u{len(statuses) % 12}"))[0])
        assert 500 in statuses  # it failed until a report reached passive health...
        assert ext_proc_counter(local, "llm_extproc_endpoint_ejections_total") >= 1
        # ...and, ejected (for 5 s the first time), gets no traffic once the filters have the next
        # snapshot (one rebuild, 50 ms, and one poll, 100 ms, later).
        time.sleep(0.3)
        after = [post(local, chat(user=f"u{i % 12}"))[0] for i in range(20)]
        assert after == [200] * 20, (statuses, after)
    finally:
        local.stop()


def test_soak_keeps_envoy_and_brain_memory_flat(capsys: pytest.CaptureFixture[str]) -> None:
    """Mixed load (streams, table decisions, escalated errors) on the Wasm data path: Envoy's
    RSS (the filter's VM heaps live there) and the brain's stay bounded."""

    from extproc.bench.memory import rss_kib
    from tests.integration.test_faults import SOAK_SECONDS, mixed_traffic

    local = started_stack(time_scale=0.05, data_path="wasm")
    try:
        pids = {"envoy": local.child("envoy").proc.pid, "brain": local.child("extproc").proc.pid}
        mixed = mixed_traffic(local)  # errors we answer are escalated: the brain answers 400

        with Load(mixed, workers=4, limit=10**6) as load:
            load.wait_for(300, timeout_s=60)  # warm-up
            start = {name: rss_kib(pid) for name, pid in pids.items()}
            requests_start = load.count()
            deadline = time.monotonic() + SOAK_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.5)
            end = {name: rss_kib(pid) for name, pid in pids.items()}
            requests = load.count() - requests_start
        with capsys.disabled():
            print(
                f"\nwasm soak {SOAK_SECONDS:.0f}s: {requests} requests, {load.failures()} failed; RSS {start} -> {end}"
            )
        assert load.failures() == 0
        for name in pids:
            # A leak of 1 KiB per request would exceed this over the run.
            assert end[name] - start[name] < max(16_000, requests // 2), (name, start, end, requests)
    finally:
        local.stop()
