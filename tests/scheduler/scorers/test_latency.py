import math

from extproc.scheduler.outlier import OutlierDetector
from extproc.scheduler.scorers.latency import LatencyScorer
from tests.helpers import fleet_snapshot, pick_view


def test_observed_latency_beats_scraped_and_slow_endpoints_score_lowest() -> None:
    outliers = OutlierDetector()
    snap = fleet_snapshot(4, ttft=[0.5, 0.1, math.nan, math.nan])
    scores = LatencyScorer(outliers).score(pick_view(snap))
    assert scores.argmax() == 1  # from /metrics mean TTFT
    for address, latency in zip(snap.membership, [0.1, 0.12, 0.11, 2.0], strict=True):
        outliers.observe(address, 200, latency)
    outliers._latency_cache = None
    scores = LatencyScorer(outliers).score(pick_view(snap))
    assert scores[3] == -math.inf  # 2.0 s is > 3x the fleet median: flagged slow
    assert scores.argmax() == 0
