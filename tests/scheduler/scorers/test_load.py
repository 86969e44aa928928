from extproc.scheduler.scorers.load import LoadScorer
from tests.helpers import fleet_snapshot, pick_view


def test_work_ahead_is_divided_by_gpu_speed() -> None:
    snap = fleet_snapshot(2, waiting=[3, 1], gpu=["a100", "t4"])
    scores = LoadScorer().score(pick_view(snap))
    # (3+0.5)/3 on the A100 is less work ahead than (1+0.5)/1 on the T4.
    assert scores[0] > scores[1]
    busy_locally = LoadScorer().score(pick_view(fleet_snapshot(2), inflight=[3, 0]))
    assert busy_locally[1] > busy_locally[0]


def test_a_queue_on_a_fast_gpu_loses_to_a_free_slot_on_a_slow_one() -> None:
    # A full A100 (16 running) with 5 queued vs a T4 running 8 with nothing queued: the new
    # request would wait a slot turnover behind five others on the A100; on the T4 it starts now.
    snap = fleet_snapshot(2, waiting=[5, 0], running=[16, 8], gpu=["a100", "t4"])
    scores = LoadScorer().score(pick_view(snap))
    assert scores[1] > scores[0]
    idle = LoadScorer().score(pick_view(fleet_snapshot(2, gpu=["a100", "t4"])))
    assert idle[0] > idle[1]  # both idle: the faster GPU serves the first token sooner
