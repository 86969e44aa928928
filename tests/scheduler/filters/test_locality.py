from extproc.scheduler.filters.locality import LocalityFilter
from tests.helpers import fleet_snapshot, pick_view


def test_prefers_the_callers_zone_while_it_has_room() -> None:
    snap = fleet_snapshot(3, zones=["a", "b", "a"], waiting=[0, 0, 9])
    locality = LocalityFilter(8)
    assert locality.keep(pick_view(snap, zone="a")).tolist() == [True, False, True]
    assert locality.keep(pick_view(snap, zone="b")).tolist() == [False, True, False]
    assert locality.keep(pick_view(snap)) is None  # no zone given: everyone stays
    assert locality.keep(pick_view(snap, zone="nowhere")) is None  # no local endpoint: fail over
    full = fleet_snapshot(2, zones=["a", "b"], waiting=[9, 0])
    assert locality.keep(pick_view(full, zone="a")) is None  # local zone full: fail over


def test_zone_masks_follow_membership_changes() -> None:
    locality = LocalityFilter(8)
    assert locality.keep(pick_view(fleet_snapshot(2, zones=["a", "b"]), zone="a")).tolist() == [True, False]
    # A new snapshot with other endpoints in other zones: the remembered mask must not be reused.
    moved = fleet_snapshot(3, zones=["b", "b", "a"])
    assert locality.keep(pick_view(moved, zone="a")).tolist() == [False, False, True]
