"""The docker-compose overlay for the Wasm data path, checked without Docker: the Envoy config is
current and accepted by the real `envoy --mode validate`, and the overlay wires brain and module."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.compose_config import BRAIN_PORT, EXTPROC_IP, WASM_MODULE, compose_wasm_envoy_config
from extproc.deploy.wasm_config import wasm_module
from extproc.devstack.stack import envoy_binary

pytestmark = pytest.mark.envoy

E2E = Path(__file__).parents[2] / "e2e"


def test_wasm_envoy_config_is_current_and_valid(tmp_path: Path) -> None:
    committed = (E2E / "compose" / "envoy-wasm.yaml").read_text()
    assert committed == compose_wasm_envoy_config(), "run python -m e2e.compose_config"
    # Validate with the module where the container mounts it replaced by the shipped file.
    local = tmp_path / "envoy-wasm.yaml"
    local.write_text(committed.replace(str(WASM_MODULE), str(wasm_module())))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    clusters = {c["name"]: c for c in yaml.safe_load(committed)["static_resources"]["clusters"]}
    brain = clusters["llm_brain"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert brain["socket_address"] == {"address": EXTPROC_IP, "port_value": BRAIN_PORT}


def test_overlay_runs_the_brain_and_mounts_the_module() -> None:
    overlay = yaml.safe_load((E2E / "docker-compose.wasm.yaml").read_text())["services"]
    command = overlay["llm-extproc"]["command"]
    assert "--data-path=wasm" in command and f"--brain-port={BRAIN_PORT}" in command
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in overlay["envoy"]["volumes"])
    assert mounts["./compose/envoy-wasm.yaml"] == "/etc/envoy/envoy.yaml"
    assert mounts["../extproc/deploy/wasm/llm_extproc.wasm"] == str(WASM_MODULE)
    for source in mounts:
        assert (E2E / source).exists(), source
