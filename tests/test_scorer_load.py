from extproc.scorer_load import LoadScorer
from tests.helpers import fleet_snapshot, pick_view


def test_work_ahead_is_divided_by_gpu_speed() -> None:
    snap = fleet_snapshot(2, waiting=[4, 1], gpu=["a100", "t4"])
    scores = LoadScorer().score(pick_view(snap))
    # (4+1)/3 on the A100 is less work ahead than (1+1)/1 on the T4.
    assert scores[0] > scores[1]
    busy_locally = LoadScorer().score(pick_view(fleet_snapshot(2), inflight=[3, 0]))
    assert busy_locally[1] > busy_locally[0]
