"""The scale simulation is consistent: every request completes once, in causal order."""

from __future__ import annotations

import pytest

from extproc.bench.scale import ROUTERS, Simulation, summarise, workload


@pytest.mark.parametrize("router", ROUTERS)
def test_every_request_completes_in_causal_order_and_the_fleet_drains(router: str) -> None:
    requests = workload(size=6, load=0.9, count=300)
    sim = Simulation(6, requests, router)
    done = sim.run()
    assert len(done) == 300
    for request in done:
        assert 0 <= request.endpoint < 6
        assert request.arrival <= request.first_token <= request.finished
    assert all(gpu.running == 0 and not gpu.queue and gpu.kv_tokens == 0 for gpu in sim.gpus)
    assert sim.inflight.total() == 0
    row = summarise(router, 6, 0.9, done, sim.pick_cpu_ns)
    assert row["requests"] == 300 and 0 <= row["goodput_share"] <= 1
    # Only the production scheduler is timed; it made every decision.
    assert (len(sim.pick_cpu_ns) == 300) is (router == "llm-extproc")


def test_the_scheduler_prefers_the_faster_gpus_under_load() -> None:
    requests = workload(size=10, load=0.9, count=1500)
    shares = {}
    for router in ("llm-extproc", "round_robin"):
        sim = Simulation(10, [type(r)(r.arrival, r.prompt, r.output) for r in requests], router)
        done = sim.run()
        shares[router] = sum(1 for r in done if sim.gpus[r.endpoint].gpu_class == "a100") / len(done)
    assert shares["round_robin"] == pytest.approx(0.5, abs=0.01)
    assert shares["llm-extproc"] > 0.6
