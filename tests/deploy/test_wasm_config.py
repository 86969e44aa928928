from __future__ import annotations

from extproc.deploy.wasm_config import FilterSettings, render_wasm
from extproc.headers import MIRROR_CLUSTER_HEADER
from tests.bench.test_overhead import routes


def test_only_the_route_mirrored_requests_match_carries_the_mirror_policy() -> None:
    held, default = routes(render_wasm(["127.0.0.1:8001"], listen_port=1, admin_port=2, brain_port=3))
    assert held["match"]["headers"] == [{"name": MIRROR_CLUSTER_HEADER, "present_match": True}]
    assert held["route"]["request_mirror_policies"] == [{"cluster_header": MIRROR_CLUSTER_HEADER}]
    assert "headers" not in default["match"] and "request_mirror_policies" not in default["route"]
    assert held["route"]["retry_policy"] == default["route"]["retry_policy"]


def test_where_nothing_picks_the_route_again_the_one_fleet_route_mirrors() -> None:
    text = render_wasm(
        ["127.0.0.1:8001"],
        listen_port=1,
        admin_port=2,
        brain_port=3,
        settings=FilterSettings(hold_headers=False),
    )
    (route,) = routes(text)
    assert route["route"]["request_mirror_policies"] == [{"cluster_header": MIRROR_CLUSTER_HEADER}]
