from extproc.scheduler.scorers.kv_cache import KVCacheScorer
from tests.helpers import fleet_snapshot, pick_view


def test_free_kv_cache_scores_higher() -> None:
    assert KVCacheScorer().score(pick_view(fleet_snapshot(2, kv=[0.9, 0.2]))).tolist() == [
        1.0 - 0.9,
        1.0 - 0.2,
    ]
