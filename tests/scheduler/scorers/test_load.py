from extproc.scheduler.scorers.load import LoadScorer
from tests.helpers import fleet_snapshot, pick_view

LONG_PROMPT = "word " * 800  # ~1,000 tokens


def test_work_ahead_is_weighed_by_each_endpoints_speed() -> None:
    snap = fleet_snapshot(2, waiting=[3, 1], gpu=["a100", "t4"])
    scores = LoadScorer().score(pick_view(snap, prompt=LONG_PROMPT))
    # Three queued on an A100 is less time ahead than one queued on a T4 three times slower.
    assert scores[0] > scores[1]
    busy_locally = LoadScorer().score(pick_view(fleet_snapshot(2), inflight=[3, 0]))
    assert busy_locally[1] > busy_locally[0]


def test_a_queue_on_a_fast_gpu_loses_to_a_free_slot_on_a_slow_one() -> None:
    # A full A100 (16 running) with 12 queued vs a T4 running 8 with nothing queued: the new
    # request would wait behind twelve others on the A100; on the T4 it starts now.
    snap = fleet_snapshot(2, waiting=[12, 0], running=[16, 8], gpu=["a100", "t4"])
    scores = LoadScorer().score(pick_view(snap, prompt=LONG_PROMPT))
    assert scores[1] > scores[0]
    idle = LoadScorer().score(pick_view(fleet_snapshot(2, gpu=["a100", "t4"]), prompt=LONG_PROMPT))
    assert idle[0] > idle[1]  # both idle: the faster GPU serves the first token sooner


def test_a_busy_batch_with_free_seats_still_beats_an_idle_slow_gpu_for_a_long_prompt() -> None:
    # Continuous batching admits the request at the next step: running sequences cost it
    # little, while the slow GPU's prefill of a long prompt costs it a lot.
    snap = fleet_snapshot(2, running=[40, 0], gpu=["a100", "t4"])
    scores = LoadScorer().score(pick_view(snap, prompt=LONG_PROMPT))
    assert scores[0] > scores[1]


def test_the_longer_the_prompt_the_more_prefill_speed_matters() -> None:
    # Prefill 4x slower but decode only 1.5x slower: measured, not a class factor.
    snap = fleet_snapshot(2, waiting=[2, 0], running=[30, 30], gpu=["a100", "l4"])
    short = pick_view(snap, prompt="hi")
    long = pick_view(snap, prompt="word " * 3200)
    for view in (short, long):  # as the estimator would have learned them
        view.prefill_s[:] = [1e-4, 4e-4]
        view.decode_s[:] = [0.010, 0.015]
    short_scores, long_scores = LoadScorer().score(short), LoadScorer().score(long)
    assert short_scores[1] > short_scores[0]  # a short prompt: skip the queue, go to the idle-queue l4
    assert long_scores[0] > long_scores[1]  # a long prompt: wait on the fast prefill
