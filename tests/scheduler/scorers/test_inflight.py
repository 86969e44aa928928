from extproc.scheduler.scorers.inflight import InFlightScorer
from tests.helpers import fleet_snapshot, pick_view


def test_fewer_local_in_flight_scores_higher() -> None:
    assert InFlightScorer().score(pick_view(fleet_snapshot(2), inflight=[2, 1])).argmax() == 1
