from extproc.filter_outlier import OutlierFilter
from extproc.outlier import OutlierConfig, OutlierDetector
from tests.helpers import fleet_snapshot, pick_view


def test_ejected_endpoint_is_dropped_until_its_period_ends() -> None:
    now = [0.0]
    outliers = OutlierDetector(OutlierConfig(consecutive_failures=2, base_ejection_s=5), clock=lambda: now[0])
    snap = fleet_snapshot(3)
    for address in snap.membership:
        outliers.observe(address, 200, 0.1)
    outliers.observe(snap.membership[1], 503, 0.1)
    assert OutlierFilter(outliers).keep(pick_view(snap)).tolist() == [True, True, True]
    outliers.observe(snap.membership[1], 503, 0.1)
    assert OutlierFilter(outliers).keep(pick_view(snap)).tolist() == [True, False, True]
    now[0] = 5.1
    assert OutlierFilter(outliers).keep(pick_view(snap)).tolist() == [True, True, True]
