from extproc.scheduler.filters.outlier import OutlierFilter
from extproc.scheduler.outlier import OutlierConfig, OutlierDetector
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


def test_a_lone_endpoint_is_never_ejected_and_the_share_is_capped() -> None:
    outliers = OutlierDetector(OutlierConfig(consecutive_failures=1), clock=lambda: 0.0)
    outliers.observe("10.0.0.1:8000", 503, 0.1)
    assert not outliers.is_ejected("10.0.0.1:8000")
    for i in range(2, 5):
        outliers.observe(f"10.0.0.{i}:8000", 200, 0.1)
    for i in range(1, 5):
        outliers.observe(f"10.0.0.{i}:8000", 503, 0.1)
    assert sum(outliers.is_ejected(f"10.0.0.{i}:8000") for i in range(1, 5)) == 2  # 50 % of 4


def test_the_cap_is_a_share_of_the_fleet_not_of_the_endpoints_heard_from() -> None:
    # Right after start only the failing endpoint has answered: it must still be ejectable.
    outliers = OutlierDetector(OutlierConfig(consecutive_failures=1), clock=lambda: 0.0, fleet_size=lambda: 4)
    outliers.observe("10.0.0.1:8000", 503, 0.1)
    assert outliers.is_ejected("10.0.0.1:8000")
    for i in range(2, 5):
        outliers.observe(f"10.0.0.{i}:8000", 503, 0.1)
    assert sum(outliers.is_ejected(f"10.0.0.{i}:8000") for i in range(1, 5)) == 2  # still 50 % of 4
