from extproc.filter_locality import LocalityFilter
from tests.helpers import fleet_snapshot, pick_view


def test_prefers_the_callers_zone_while_it_has_room() -> None:
    snap = fleet_snapshot(3, zones=["a", "b", "a"], waiting=[0, 0, 9])
    assert LocalityFilter(8).keep(pick_view(snap, zone="a")).tolist() == [True, False, True]
    assert LocalityFilter(8).keep(pick_view(snap)).tolist() == [True, True, True]
    full = fleet_snapshot(2, zones=["a", "b"], waiting=[9, 0])
    assert LocalityFilter(8).keep(pick_view(full, zone="a")).tolist() == [True, True]
