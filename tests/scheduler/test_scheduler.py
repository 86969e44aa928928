from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import ErrorKind, RoutingError
from extproc.fleet.state import Endpoint, EndpointMetrics, build_snapshot
from extproc.scheduler.outlier import OutlierConfig, OutlierDetector
from extproc.scheduler.picking import PickContext
from extproc.scheduler.scheduler import Scheduler, SchedulerConfig, _normalise, _normalise_rows
from extproc.scheduler.speed import SpeedEstimator
from tests.helpers import fleet_snapshot


def pick(scheduler: Scheduler, snap, count: int = 3, inflight=None, **ctx):  # type: ignore[no-untyped-def]
    rows = np.arange(snap.size, dtype=np.intp)
    counts = np.asarray(inflight or [0] * snap.size, dtype=np.int64)
    return scheduler.pick(snap, rows, counts, PickContext(model="m", now=100.0, **ctx), count)


def test_normalise_is_min_max_with_non_finite_as_worst() -> None:
    assert _normalise(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]
    assert _normalise(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]
    assert _normalise(np.array([-np.inf, 1.0, 0.0])).tolist() == [0.0, 1.0, 0.0]
    rows = np.array([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [-np.inf, 1.0, 0.0], [np.nan, np.inf, -np.inf]])
    expected = [_normalise(row).tolist() for row in rows]
    assert _normalise_rows(rows).tolist() == expected
    # Below one unit of spread, differences are scaled by one unit, not stretched to full weight.
    assert _normalise_rows(np.array([[0.0, 0.25, 0.5]])).tolist() == [[0.0, 0.25, 0.5]]


def test_prefers_the_idle_fast_endpoint_and_returns_distinct_fallbacks() -> None:
    snap = fleet_snapshot(4, waiting=[6, 0, 0, 3], gpu=["a100", "t4", "a100", "a100"])
    chosen = pick(Scheduler(SchedulerConfig(gpu_weights={"a100": 3.0, "t4": 1.0})), snap)
    assert chosen[0] == 2 and len(set(chosen)) == 3


def test_fallbacks_prefer_other_nodes_and_zones() -> None:
    snap = fleet_snapshot(4, nodes=["n1", "n1", "n2", "n3"], zones=["a", "a", "a", "b"], waiting=[0, 0, 1, 2])
    chosen = pick(Scheduler(), snap)
    nodes = [snap.endpoints[r].node for r in chosen]
    assert len(set(nodes)) == 3


def test_config_errors_are_precise() -> None:
    with pytest.raises(ValueError, match=r"scheduler: unknown setting\(s\) \['weights'\]"):
        SchedulerConfig.from_dict({"weights": {}})
    with pytest.raises(ValueError, match=r"scheduler.scorers.nope: unknown scorer 'nope'"):
        SchedulerConfig.from_dict({"scorers": {"nope": 1}})
    with pytest.raises(ValueError, match=r"scheduler.filters\[0\]: unknown filter 'load'"):
        SchedulerConfig.from_dict({"filters": ["load"]})
    with pytest.raises(ValueError, match=r"scheduler.scorers.queue: must be >= 0"):
        SchedulerConfig.from_dict({"scorers": {"queue": -1}})
    with pytest.raises(ValueError, match=r"scheduler.scorers.prefix: unknown parameter\(s\) \['blocks'\]"):
        SchedulerConfig.from_dict({"scorers": {"prefix": {"weight": 2, "blocks": 3}}})
    with pytest.raises(ValueError, match=r"scheduler.scorers.prefix.block_chars: must be an integer"):
        SchedulerConfig.from_dict({"scorers": {"prefix": {"block_chars": 1.5}}})
    with pytest.raises(ValueError, match=r"scheduler.filters\[1\].max_age_s: must be a finite number >= 0"):
        SchedulerConfig.from_dict({"filters": ["ready", {"type": "stale", "max_age_s": -1}]})
    with pytest.raises(ValueError, match=r"scheduler.gpu_weights.a100: must be > 0"):
        SchedulerConfig.from_dict({"gpu_weights": {"a100": 0}})
    config = SchedulerConfig.from_dict({"filters": ["ready"], "scorers": {"prefix": 0}})
    assert [f.type for f in config.filters] == ["ready"]
    assert config.weights["prefix"] == 0 and config.weights["load"] > 0


def test_each_plugin_gets_its_own_parameters() -> None:
    config = SchedulerConfig.from_dict(
        {
            "filters": ["ready", {"type": "stale", "max_age_s": 7.5}],
            "scorers": {"prefix": {"weight": 2.5, "block_chars": 16}, "session": {"load_factor": 2.0}},
        }
    )
    scheduler = Scheduler(config)
    stale = next(f for f in scheduler.fleet_filters if f.name == "stale")
    assert stale.stale_after_s == 7.5  # type: ignore[attr-defined]
    scorers = {s.name: (s, w) for s, w in scheduler.scorers}
    assert scorers["prefix"][1] == 2.5 and scorers["prefix"][0].block_chars == 16  # type: ignore[attr-defined]
    assert scorers["session"][0].load_factor == 2.0  # type: ignore[attr-defined]
    assert scorers["load"][1] == 3.0  # scorers not named keep their default weight


def test_new_gpu_weights_change_speeds_even_when_the_fleet_is_unchanged() -> None:
    """A reload builds a new config; the speed cache keyed by fleet membership must not survive it."""
    snap = fleet_snapshot(2, gpu=["a100", "t4"])
    before = Scheduler(SchedulerConfig().with_gpu_weights({"a100": 3.0, "t4": 1.0}))
    fast, slow = before._speed(snap).tolist()
    assert fast / slow == pytest.approx(3.0)
    after = Scheduler(SchedulerConfig().with_gpu_weights({"a100": 10.0, "t4": 1.0}))
    fast, slow = after._speed(snap).tolist()
    assert fast / slow == pytest.approx(10.0)
    assert Scheduler()._speed(snap).tolist() == [1.0, 1.0]  # no prior by default: no class is favoured


def test_saturation_sheds_batch_first_then_standard_never_premium() -> None:
    scheduler = Scheduler(SchedulerConfig(shed_standard=True))
    busy = fleet_snapshot(2, waiting=[10, 12], kv=[0.95, 0.97])
    with pytest.raises(RoutingError) as info:
        pick(scheduler, busy, priority=-1)
    assert info.value.kind is ErrorKind.OVERLOADED and info.value.status == 429
    assert info.value.retry_after_s == scheduler.config.retry_after_s
    assert pick(scheduler, busy, priority=0)  # standard still served at this level
    severe = fleet_snapshot(2, waiting=[40, 50], kv=[0.99, 0.99])
    with pytest.raises(RoutingError):
        pick(scheduler, severe, priority=0)
    assert pick(scheduler, severe, priority=1)  # premium is never shed


def test_slow_start_ramps_a_newly_ready_endpoint() -> None:
    old = fleet_snapshot(2, ready_at=0.0)
    # Endpoint 1 became ready just now: it should lose to an equally idle, warmed-up one.
    metrics = {e.address: EndpointMetrics(scraped_at=100.0) for e in old.endpoints}
    fresh = build_snapshot(list(old.endpoints), metrics, version=2, now=100.0)
    fresh = build_snapshot(list(old.endpoints), metrics, version=3, previous=old, now=100.0)
    assert fresh.ready_since.tolist() == [0.0, 0.0]
    newer = build_snapshot([old.endpoints[0]], metrics, version=4, previous=old, now=0.0)
    both = build_snapshot(list(old.endpoints), metrics, version=5, previous=newer, now=99.0)
    assert both.ready_since.tolist() == [0.0, 99.0]
    firsts = [pick(Scheduler(), both, count=1)[0] for _ in range(20)]
    assert firsts.count(0) == 20


@st.composite
def fleets(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 12))
    floats = st.floats(0, 50, allow_nan=False)
    return (
        n,
        draw(st.lists(floats, min_size=n, max_size=n)),
        draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)),
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),  # healthy
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),  # discovered ready
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),  # ejected
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),  # scraped at all
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),  # last scrape is stale
        draw(st.integers(1, 5)),
        draw(st.integers(-1, 1)),
        draw(st.text(max_size=300)),
    )


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_never_returns_ejected_unready_or_undiscovered_and_always_distinct(case) -> None:  # type: ignore[no-untyped-def]
    n, waiting, kv, healthy, ready, ejected, scraped, stale, count, priority, prompt = case
    endpoints = [
        Endpoint(f"10.0.0.{i}:80", models=("m",), discovered_ready=ready[i], zone="ab"[i % 2])
        for i in range(n)
    ]
    metrics = {
        e.address: EndpointMetrics(
            waiting=waiting[i], kv_usage=kv[i], healthy=healthy[i], scraped_at=50.0 if stale[i] else 99.0
        )
        for i, e in enumerate(endpoints)
        if scraped[i]
    }
    snap = build_snapshot(endpoints, metrics, version=1, now=0.0)
    outliers = OutlierDetector(
        OutlierConfig(consecutive_failures=1, max_ejection_share=1.0), clock=lambda: 100.0
    )
    for i, e in enumerate(endpoints):
        if ejected[i]:
            outliers.observe(e.address, 503, 0.1)
    scheduler = Scheduler(outliers=outliers)
    try:
        chosen = pick(
            scheduler,
            snap,
            count=count,
            priority=priority,
            prompt_text=prompt,
            session_key=prompt or None,
            zone="a" if "a" in prompt else None,
        )
    except RoutingError as error:
        assert error.kind is ErrorKind.OVERLOADED and priority <= 0
        return
    assert len(chosen) == len(set(chosen)) <= count
    for row in chosen:
        assert 0 <= row < n
        assert healthy[row] and ready[row] and scraped[row] and not ejected[row]
    usable = [i for i in range(n) if healthy[i] and ready[i] and scraped[i] and not ejected[i]]
    # Preferences (fresh metrics, the caller's zone) order the list but never shorten it: a
    # short list leaves Envoy's retries to a fallback LB that may pick the endpoint that failed.
    assert len(chosen) == min(count, len(usable))
    fresh = [i for i in usable if not stale[i]]
    assert chosen[: len(fresh)] == [r for r in chosen if r in fresh] or not fresh


@pytest.mark.parametrize("prior", [False, True], ids=["learned", "gpu-prior"])
def test_beats_round_robin_and_least_inflight_on_a_heterogeneous_fleet(prior: bool) -> None:
    """A tiny discrete-time queueing model: 2 fast (3 req/tick) + 2 slow (1 req/tick) servers.

    Without a prior the scheduler knows nothing of the GPUs: it learns their speed from the
    work counters the servers report (prompt and decode tokens, and the seconds they took).
    """
    speeds = [3.0, 3.0, 1.0, 1.0]
    gpus = ["a100", "a100", "t4", "t4"]
    rng = np.random.default_rng(7)
    arrivals = rng.poisson(6.5, size=400)  # ~81 % of the fleet's 8 req/tick capacity

    def run(choose) -> float:  # type: ignore[no-untyped-def]
        queues = [0.0] * 4
        waited = 0.0
        served = 0
        done = [0.0] * 4
        for tick, count in enumerate(arrivals):
            for _ in range(count):
                target = choose(queues, done, tick)
                waited += queues[target] / speeds[target]
                queues[target] += 1
                served += 1
            done = [d + min(q, s) for d, q, s in zip(done, queues, speeds, strict=True)]
            queues = [max(0.0, q - s) for q, s in zip(queues, speeds, strict=True)]
        return waited / served

    clock = [0.0]
    config = SchedulerConfig(gpu_weights={"a100": 3.0, "t4": 1.0} if prior else {})
    scheduler = Scheduler(config, speeds=SpeedEstimator(clock=lambda: clock[0]))
    counter = iter(range(10**9))

    def ours(queues, done, tick):  # type: ignore[no-untyped-def]
        # Each request: 100 prompt tokens at 1 ms/token and 10 output tokens at 10 ms/token
        # on the fast servers, 3x that on the slow ones.
        counters = [
            (100 * d, 0.1 * d / s * 3, 10 * d, 0.1 * d / s * 3) for d, s in zip(done, speeds, strict=True)
        ]
        snap = fleet_snapshot(4, waiting=queues, gpu=gpus, counters=counters)
        clock[0] = float(tick)
        scheduler.speeds.on_publish(snap)
        return pick(scheduler, snap, count=1)[0]

    round_robin = run(lambda q, d, t: next(counter) % 4)
    least = run(lambda q, d, t: int(np.argmin(q)))
    mine = run(ours)
    assert mine * 1.2 < least < round_robin


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 20), min_size=3, max_size=40),
    st.lists(st.tuples(st.integers(0, 39), st.integers(0, 5)), min_size=1, max_size=12),
    st.sampled_from([None, "user-1", "user-2"]),
    st.sampled_from([None, "a"]),
)
def test_reusing_the_prepared_fleet_state_decides_as_a_fresh_scheduler(waiting, steps, session, zone) -> None:  # type: ignore[no-untyped-def]
    """Fleet-only work is reused across picks; in-flight changes between them must still count."""
    n = len(waiting)
    snap = fleet_snapshot(
        n,
        waiting=[float(w) for w in waiting],
        gpu=[("a100", "t4")[i % 2] for i in range(n)],
        zones=[("a", "b")[i % 2] for i in range(n)],
        nodes=[f"n{i}" for i in range(n)],
    )
    reusing = Scheduler()
    inflight = [0] * n
    prompt = "You are a helpful assistant. " * 10
    for row, extra in steps:
        inflight[row % n] += extra
        fresh = Scheduler(prepared_ttl_s=0.0)
        # The prefix scorer learns from picks: give the fresh one the same history.
        fresh_prefix = next(s for s, _ in fresh.scorers if s.name == "prefix")
        reused_prefix = next(s for s, _ in reusing.scorers if s.name == "prefix")
        fresh_prefix.owner = reused_prefix.owner.copy()  # type: ignore[attr-defined]
        kwargs = {"inflight": inflight, "session_key": session, "zone": zone, "prompt_text": prompt}
        # Equal scores may be ordered either way (random tie-break): compare the scores chosen,
        # up to the tie-break jitter (1e-6) carried through rounding.
        assert pick_scores(reusing, snap, **kwargs) == pytest.approx(
            pick_scores(fresh, snap, **kwargs), abs=2e-3
        )


def pick_scores(scheduler: Scheduler, snap, inflight, **ctx):  # type: ignore[no-untyped-def]
    rows = np.arange(snap.size, dtype=np.intp)
    context = PickContext(model="m", now=100.0, want_scores=True, **ctx)
    scheduler.pick(snap, rows, np.asarray(inflight, dtype=np.int64), context, 3)
    return [round(s, 3) for s in context.scores or []]


def test_default_priority_is_never_shed_unless_the_policy_says_so() -> None:
    severe = fleet_snapshot(2, waiting=[400, 500], kv=[1.0, 1.0])
    assert pick(Scheduler(), severe, priority=0)  # no policy: standard is served however busy
    with pytest.raises(RoutingError):
        pick(Scheduler(), severe, priority=-1)  # sheddable traffic is shed
    assert SchedulerConfig.from_dict({"shed_standard": True}).shed_standard
    with pytest.raises(ValueError, match="shed_standard: must be true or false"):
        SchedulerConfig.from_dict({"shed_standard": "yes"})


def test_the_decision_detail_names_each_chosen_endpoints_speed_and_its_source() -> None:
    snap = fleet_snapshot(2, gpu=["a100", "t4"])
    context = PickContext(model="m", now=100.0, want_scores=True)
    scheduler = Scheduler(SchedulerConfig(gpu_weights={"a100": 3.0}))
    chosen = scheduler.pick(snap, np.arange(2, dtype=np.intp), np.zeros(2, dtype=np.int64), context, 2)
    sources = {row: speed["source"] for row, speed in zip(chosen, context.speeds or [], strict=True)}
    assert sources == {0: "prior", 1: "assumed"}
    assert all(float(s["prefill_tokens_per_s"]) > 0 for s in context.speeds or [])
