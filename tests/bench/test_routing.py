"""The routing benchmark's bookkeeping: failures count against a router, cells are medians
with spread, the degradation reaction time, and loads relative to each fleet's capacity."""

from __future__ import annotations

import math
from dataclasses import replace

from extproc.bench.routing import SCENARIOS, _finite, aggregate, capacity_rps, share_halved_after, speedup_for
from extproc.devstack.loadgen import LoadResult, Result, TraceRequest


def test_a_failed_request_is_an_infinite_ttft_and_misses_the_objective() -> None:
    ok = [Result(200, 0.1, 1.0, 10, "a") for _ in range(98)]
    shed = [Result(429, 0.0, 0.01, 0, "", "HTTP 429") for _ in range(2)]
    with_failures = LoadResult(ok + shed, wall_s=10.0).summary(ttft_slo_s=1.0, tpot_slo_s=1.0)
    assert with_failures["errors"] == 2
    assert math.isinf(with_failures["ttft_p99_s"])  # two failures of 100 are the 99th percentile
    assert with_failures["ttft_p50_s"] == 0.1
    assert with_failures["goodput_rps"] == 9.8  # the 98 served, per second
    served = LoadResult(ok, wall_s=10.0).summary(ttft_slo_s=1.0, tpot_slo_s=1.0)
    assert served["ttft_p99_s"] == 0.1


def test_a_cell_is_the_median_of_its_repeats_with_min_and_max() -> None:
    runs = [
        {
            "router": "r",
            "scenario": "s",
            "load": 0.85,
            "requests": 100,
            "errors": e,
            "ttft_p50_s": 0.1,
            "ttft_p99_s": p99,
            "e2e_p99_s": 1.0,
            "output_tokens_per_s": 10.0,
            "goodput_rps": g,
            "prefix_hit_rate": 0.2,
        }
        for e, p99, g in ((0, 1.0, 5.0), (3, math.inf, 4.0), (0, 2.0, 6.0))
    ]
    cell = aggregate(runs)
    assert (cell["ttft_p99_s"], cell["ttft_p99_s_min"], cell["ttft_p99_s_max"]) == (2.0, 1.0, math.inf)
    assert (cell["goodput_rps"], cell["repeats"]) == (5.0, 3)
    assert _finite(cell)["ttft_p99_s_max"] == "inf"


def test_seconds_until_the_degraded_endpoints_share_halves() -> None:
    results = []
    for i in range(400):  # one request every 0.1 s; "slow" serves half until 20 s, then a tenth
        t = i * 0.1
        slow = (i % 2 == 0) if t < 20.0 or t >= 26.0 else (i % 10 == 0)
        results.append(Result(200, 0.1, 1.0, 1, "slow" if slow else "fast", sent_at_s=t))
    halved = share_halved_after(LoadResult(results), "slow", 14.0, window_s=3.0)
    # Degraded at 14 s but the share only falls at 20 s: the trailing 3 s window shows it by ~22.
    assert halved is not None and 7.0 <= halved <= 9.0
    assert share_halved_after(LoadResult(results[:100]), "slow", 5.0) is None  # never halves


def test_the_replay_carries_the_load_asked_for_whatever_the_fleet() -> None:
    trace = [TraceRequest(at_s=i * 0.5, prompt_tokens=1000, output_tokens=200) for i in range(1000)]
    # 40 requests wanted in 10 s: the 40th request of the trace is due at 20 s, so 2x.
    assert speedup_for(trace, 4.0, 10.0) == 2.0

    def simulated(name: str) -> float:  # requests per simulated second
        return capacity_rps(SCENARIOS[name], trace) * SCENARIOS[name].time_scale

    assert simulated("many-prefix") > simulated("heterogeneous") > 0  # 8 A100s > 2 A100s + 2 T4s
    # The load of the degrading scenario is relative to what the fleet carries once degraded.
    degrading = SCENARIOS["degrading"]
    assert capacity_rps(degrading, trace) < capacity_rps(replace(degrading, degrade=None), trace)
