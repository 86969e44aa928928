from extproc.scheduler.filters.stale import StaleFilter
from tests.helpers import fleet_snapshot, pick_view


def test_stale_endpoints_are_dropped_only_when_fresh_ones_exist() -> None:
    snap = fleet_snapshot(3, scraped_at=[99.9, 90.0, 99.5])
    assert StaleFilter(1.0).keep(pick_view(snap, now=100.0)).tolist() == [True, False, True]
    all_stale = fleet_snapshot(2, scraped_at=[50.0, 60.0])
    assert StaleFilter(1.0).keep(pick_view(all_stale, now=100.0)).tolist() == [True, True]
