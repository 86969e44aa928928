from extproc.fleet.state import Endpoint, EndpointMetrics, build_snapshot
from extproc.scheduler.filters.ready import ReadyFilter
from tests.helpers import fleet_snapshot, pick_view


def test_unhealthy_unscraped_and_not_ready_endpoints_are_dropped() -> None:
    snap = fleet_snapshot(3, healthy=[True, False, True])
    assert ReadyFilter().keep(pick_view(snap)).tolist() == [True, False, True]
    warming = Endpoint("10.0.0.9:8000", models=("m",), discovered_ready=False)
    never = Endpoint("10.0.0.8:8000", models=("m",))
    snap = build_snapshot([warming, never], {warming.address: EndpointMetrics(scraped_at=1.0)}, version=1)
    assert ReadyFilter().keep(pick_view(snap)).tolist() == [False, False]
