"""Passive health on the Wasm data path: the filter's batched reports carry the statuses (the
rest of the reliability suite runs on both data paths in tests/integration/test_faults.py and
tests/integration/test_fuzz.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ext_proc_counter, started_stack
from tests.helpers import wait_until
from tests.integration.test_envoy import sim_control
from tests.integration.test_faults import chat, post
from tests.wasm.harness import StaticBrain, WasmEnvoy, started

pytestmark = pytest.mark.envoy


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


@pytest.fixture(scope="module")
def filter_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WasmEnvoy, StaticBrain]]:
    yield from started(tmp_path_factory.mktemp("prefix-memory"), endpoints=2)


def test_prefix_ownership_stays_bounded_in_envoys_memory(
    filter_only: tuple[WasmEnvoy, StaticBrain], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every distinct 4 KiB prompt teaches the VM 64 block owners; two generations of 32,768
    bound them. Past the first two generations, Envoy's RSS stays flat however many prompts
    come (without the bound it would grow ~1.5 KiB per prompt)."""
    from extproc.bench.memory import rss_kib

    envoy, brain = filter_only
    wait_until(lambda: brain.polls > 0)

    def send(n: int, start: int) -> None:
        for i in range(start, start + n):
            text = f"{i:08d} " + "distinct prompt text " * 200  # 64 blocks, the first differs
            status, _, _ = envoy.request(
                "/v1/chat/completions",
                json.dumps({"model": "m", "messages": [{"role": "user", "content": text[:4200]}]}).encode(),
            )
            assert status == 200

    send(2000, 0)  # past two generations (2,000 x 64 blocks > 3 x 32,768): their peak
    before = rss_kib(envoy.proc.pid)
    send(3000, 2000)  # six more generations
    after = rss_kib(envoy.proc.pid)
    with capsys.disabled():
        print(f"\nEnvoy RSS over 3,000 more distinct 4 KiB prompts: {before} -> {after} KiB")
    assert after - before < 2_000, (before, after)
