from __future__ import annotations

import json
import subprocess
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from extproc.bench.overhead import minimal_decider, with_fixed_decision, with_retries
from extproc.deploy.envoy_config import ENVOY_DIR, connection_manager, lb_endpoints
from extproc.deploy.wasm_config import render_wasm
from extproc.devstack.stack import envoy_binary, free_port
from tests.wasm.harness import WasmEnvoy


def routes(text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = connection_manager(yaml.safe_load(text))["route_config"]["virtual_hosts"][
        0
    ]["routes"]
    return found


def test_the_retries_baseline_is_plain_envoy_with_the_wasm_paths_retry_policy(tmp_path: Path) -> None:
    plain = Template((ENVOY_DIR / "bench-plain.yaml").read_text()).substitute(
        admin_port=9901,
        listen_port=10000,
        lb_policy="LEAST_REQUEST",
        lb_endpoints=lb_endpoints(["127.0.0.1:8001"]),
    )
    wasm = render_wasm(["127.0.0.1:8001"], listen_port=1, admin_port=2, brain_port=3)
    text = with_retries(plain, wasm)
    (route,) = routes(text)
    assert route["route"]["retry_policy"] == routes(wasm)[-1]["route"]["retry_policy"]
    assert route["route"]["retry_policy"]["retry_host_predicate"][0]["name"].endswith("previous_hosts")
    assert "retry_policy" not in routes(plain)[0]["route"]
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.envoy
def test_the_minimal_decider_sends_every_request_to_its_fixed_endpoint(tmp_path: Path) -> None:
    module = minimal_decider(tmp_path)
    assert module is not None, "the checkout's wasm/ and npm build it"
    envoy = WasmEnvoy(
        3,
        tmp_path,
        free_port(),
        module=module,
        rewrite=lambda text, addresses: with_fixed_decision(text, addresses[1]),
    )
    try:
        for _ in range(5):
            status, _, raw = envoy.request("/v1/chat/completions", b'{"model": "m", "messages": []}')
            assert status == 200
            assert json.loads(raw)["endpoint"] == envoy.addresses[1]
    finally:
        envoy.stop()
