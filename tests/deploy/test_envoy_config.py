from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from extproc.deploy.envoy_config import EnvoyPorts, render
from extproc.devstack.stack import envoy_binary


def filter_names(text: str) -> list[str]:
    config = yaml.safe_load(text)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return [f["name"] for f in chain["typed_config"]["http_filters"]]


@pytest.mark.parametrize("observe", [True, False])
def test_rendered_config_is_valid_for_envoy_with_and_without_the_observer(
    observe: bool, tmp_path: Path
) -> None:
    text = render(["127.0.0.1:8001", "127.0.0.1:8002"], EnvoyPorts(), observe=observe)
    names = filter_names(text)
    assert names[0] == "strip-client-routing-headers" and names[-1] == "envoy.filters.http.router"
    assert ("llm-observe" in names) is observe
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_observer_never_waits_and_sees_the_response_only() -> None:
    config = yaml.safe_load(render(["127.0.0.1:8001"], EnvoyPorts()))
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (observer,) = [f for f in chain["typed_config"]["http_filters"] if f["name"] == "llm-observe"]
    typed = observer["typed_config"]
    assert typed["observability_mode"] is True and typed["failure_mode_allow"] is True
    assert typed["processing_mode"]["request_body_mode"] == "NONE"
    assert typed["processing_mode"]["response_body_mode"] == "STREAMED"


def test_retries_past_our_list_never_go_back_to_a_host_that_failed() -> None:
    """Past the end of our list Envoy's fallback LB picks; least_request favours a dead host
    (it has no active requests), so the route must exclude hosts already tried."""
    config = yaml.safe_load(render(["127.0.0.1:8001"], EnvoyPorts()))
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = chain["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"]["prefix"] for r in routes] == ["/v1/audio/", "/"]  # uploads, everything else
    for route in routes:
        retry = route["route"]["retry_policy"]
        predicates = [p["name"] for p in retry["retry_host_predicate"]]
        assert predicates == ["envoy.retry_host_predicates.previous_hosts"]
        assert retry["host_selection_retry_max_attempts"] >= 3
