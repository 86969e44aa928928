from __future__ import annotations

import math

import pytest

from extproc.scheduler.config import SchedulerConfig
from extproc.scheduler.scheduler import Scheduler
from extproc.scheduler.speed import SpeedEstimator
from tests.helpers import fleet_snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(estimator: SpeedEstimator, clock: Clock, rates: list[tuple[float, float]], seconds: int) -> None:
    """Endpoints doing 10 requests a second of 100 prompt and 11 output tokens (10 decode
    intervals) each, at (prefill, decode) s/token."""
    totals = getattr(estimator, "_test_totals", None) or [[0.0] * 5 for _ in rates]
    for _ in range(seconds):
        clock.now += 1.0
        for total, (prefill, decode) in zip(totals, rates, strict=True):
            total[0] += 1000
            total[1] += 1000 * prefill
            total[2] += 100
            total[3] += 100 * decode
            total[4] += 10
        estimator.on_publish(fleet_snapshot(len(rates), counters=[tuple(t) for t in totals]))  # type: ignore[misc]
    estimator._test_totals = totals  # type: ignore[attr-defined]


def test_server_counters_give_prefill_and_decode_rates_that_scale_independently() -> None:
    clock = Clock()
    estimator = SpeedEstimator(clock=clock)
    feed(estimator, clock, [(1e-4, 0.01), (4e-4, 0.02)], 5)
    prefill, decode = estimator.evidence(fleet_snapshot(2))
    assert prefill.tolist() == pytest.approx([1e-4, 4e-4])
    assert decode.tolist() == pytest.approx([0.01, 0.02])
    assert estimator.mean_prompt_tokens() == pytest.approx(100)
    assert estimator.mean_output_tokens() == pytest.approx(11)


def test_a_throttled_endpoint_is_noticed_within_a_few_half_lives() -> None:
    clock = Clock()
    estimator = SpeedEstimator(half_life_s=10.0, clock=clock)
    feed(estimator, clock, [(1e-4, 0.01)], 60)
    feed(estimator, clock, [(2e-4, 0.02)], 30)  # 2x slower from now on
    _, decode = estimator.evidence(fleet_snapshot(1))
    assert decode[0] > 0.018  # 3 half-lives: 7/8 of the evidence is the new pace


def test_a_counter_reset_is_not_read_as_negative_work() -> None:
    clock = Clock()
    estimator = SpeedEstimator(clock=clock)
    feed(estimator, clock, [(1e-4, 0.01)], 3)
    estimator.on_publish(fleet_snapshot(1, counters=[(10.0, 100.0, 1.0, 100.0, 1.0)]))  # restarted
    prefill, decode = estimator.evidence(fleet_snapshot(1))
    assert prefill[0] == pytest.approx(1e-4) and decode[0] == pytest.approx(0.01)


def test_observed_responses_are_evidence_when_the_server_reports_none() -> None:
    estimator = SpeedEstimator()
    snap = fleet_snapshot(2)
    address = snap.endpoints[0].address
    for _ in range(3):
        estimator.observe_response(address, 1000, 0.5, 0.04, 11)
    prefill, decode = estimator.evidence(fleet_snapshot(2))
    assert prefill[0] == pytest.approx(5e-4) and decode[0] == pytest.approx(0.04)
    assert math.isnan(prefill[1]) and math.isnan(decode[1])
    assert estimator.mean_prompt_tokens() == pytest.approx(1000)
    assert estimator.mean_output_tokens() == pytest.approx(11)


def test_evidence_overrides_a_wrong_prior_and_fills_the_unmeasured() -> None:
    clock = Clock()
    estimator = SpeedEstimator(clock=clock)
    # The prior claims the t4 is 3x faster; measurements say it is 3x slower at everything.
    config = SchedulerConfig(gpu_weights={"a100": 1.0, "t4": 3.0})
    feed(estimator, clock, [(1e-4, 0.01), (3e-4, 0.03), (math.nan, math.nan)], 5)
    snap = fleet_snapshot(3, gpu=["a100", "t4", "t4"])
    speeds = Scheduler(config, speeds=estimator).endpoint_speeds(snap)
    assert speeds.relative[0] / speeds.relative[1] == pytest.approx(3.0)
    assert [speeds.source(r) for r in range(3)] == ["measured", "measured", "prior"]
    # The unmeasured t4 follows the prior, scaled to what was measured: seconds x weight.
    assert speeds.prefill_s_per_token[2] == pytest.approx(float(1e-4 * 1.0 + 3e-4 * 3.0) / 2 / 3)


def test_without_a_prior_an_unmeasured_or_unknown_class_is_assumed_median() -> None:
    clock = Clock()
    estimator = SpeedEstimator(clock=clock)
    feed(estimator, clock, [(1e-4, 0.01), (3e-4, 0.03), (math.nan, math.nan)], 5)
    snap = fleet_snapshot(3, gpu=["a100", "t4", "b200"])
    speeds = Scheduler(speeds=estimator).endpoint_speeds(snap)
    assert speeds.source(2) == "assumed"
    assert speeds.decode_s_per_token[2] == pytest.approx(0.02)
    assert speeds.relative[0] > speeds.relative[2] > speeds.relative[1]


def test_endpoints_that_leave_the_fleet_are_forgotten() -> None:
    clock = Clock()
    estimator = SpeedEstimator(clock=clock)
    feed(estimator, clock, [(1e-4, 0.01), (2e-4, 0.02)], 3)
    both = fleet_snapshot(2)
    assert estimator.evidence(both)[1][1] == pytest.approx(0.02)
    estimator.on_publish(fleet_snapshot(1))  # the second endpoint is gone
    _, decode = estimator.evidence(both)
    assert decode[0] == pytest.approx(0.01) and math.isnan(decode[1])
