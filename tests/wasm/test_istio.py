"""The Wasm data path's Istio manifests, validated offline: Istio's CRD schemas, then the sidecar
config Istio would build (WasmPlugin filter + EnvoyFilter patches) through `envoy --mode validate`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from extproc.deploy.istio import IstioSettings
from extproc.deploy.istio_wasm import manifests, materialised_wasm_filter, wasm_filter_name
from extproc.deploy.wasm_config import wasm_module
from tests.deploy.test_istio import DATA, apply_envoy_filter, crd_schemas, envoy_validate, strict

pytestmark = pytest.mark.envoy


def wasm_plugin_schema() -> dict[str, Any]:
    crd = yaml.safe_load((DATA / "wasmplugin-crd.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return {**schema, "properties": {**schema["properties"], "spec": strict(schema["properties"]["spec"])}}


def parts(settings: IstioSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    objects = manifests(settings)
    plugin = next(o for o in objects if o["kind"] == "WasmPlugin")
    envoy_filter = next(o for o in objects if o["kind"] == "EnvoyFilter")
    return plugin, envoy_filter


def test_brain_deployment_and_service_validate_against_kubernetes() -> None:
    import kubernetes_validate

    objects = [o for o in manifests(IstioSettings()) if "istio.io" not in o["apiVersion"]]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--data-path", "wasm", "--brain-port", "9003"]
    service = next(o for o in objects if o["kind"] == "Service")
    assert 9003 in [p["port"] for p in service["spec"]["ports"]]


def test_wasm_plugin_and_envoy_filter_validate_against_istios_crds() -> None:
    plugin, envoy_filter = parts(IstioSettings())
    jsonschema.validate(plugin, wasm_plugin_schema())
    jsonschema.validate(envoy_filter, crd_schemas()[("networking.istio.io/v1alpha3", "EnvoyFilter")])
    broken = copy.deepcopy(plugin)
    broken["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, wasm_plugin_schema())
    broken = copy.deepcopy(plugin)
    broken["spec"]["pluginNmae"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, wasm_plugin_schema())


def sidecar_with(envoy_filter: dict[str, Any], settings: IstioSettings) -> dict[str, Any]:
    """The sidecar's config as Istio builds it: the plugin's filter before the router, then our patches."""
    config = yaml.safe_load((DATA / "sidecar-envoy.yaml").read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(-1, materialised_wasm_filter(settings, str(wasm_module())))
    applied = apply_envoy_filter(config, envoy_filter, "SIDECAR_OUTBOUND")
    assert applied == len(envoy_filter["spec"]["configPatches"])
    return config


def test_the_sidecar_config_istio_would_build_is_accepted_by_envoy(tmp_path: Path) -> None:
    settings = IstioSettings()
    _, envoy_filter = parts(settings)
    config = sidecar_with(envoy_filter, settings)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in chain["http_filters"]]
    assert names[-6:] == [
        "strip-client-routing-headers",
        wasm_filter_name(settings),
        "envoy.filters.http.buffer",
        "apply-decision",
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.router",
    ]
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_rejects_a_broken_patch(tmp_path: Path) -> None:
    settings = IstioSettings()
    _, envoy_filter = parts(settings)
    broken = copy.deepcopy(envoy_filter)
    broken["spec"]["configPatches"][2]["patch"]["value"]["typed_config"]["mutations"]["request_mutations"][0][
        "append"
    ]["header"]["valeu"] = "x"
    result = envoy_validate(sidecar_with(broken, settings), tmp_path)
    assert result.returncode != 0


def test_render_command_writes_the_wasm_manifests(tmp_path: Path) -> None:
    from extproc import cli

    assert cli.main(["render", "istio-wasm", "--out", str(tmp_path)]) == 0
    kinds = [o["kind"] for o in yaml.safe_load_all((tmp_path / "wasm.yaml").read_text())]
    assert kinds[-2:] == ["WasmPlugin", "EnvoyFilter"]
    assert "Deployment" in kinds


PROVIDERS_POLICY = Path(__file__).parents[2] / "policies" / "providers.yaml"


def test_render_with_a_policy_adds_its_providers_and_every_object_validates(tmp_path: Path) -> None:
    import kubernetes_validate

    from extproc import cli

    assert cli.main(["render", "istio-wasm", "--policy", str(PROVIDERS_POLICY), "--out", str(tmp_path)]) == 0
    written = {p.name: [o for o in yaml.safe_load_all(p.read_text()) if o] for p in tmp_path.glob("*.yaml")}
    assert sorted(written) == ["provider-routes.yaml", "providers.yaml", "wasm.yaml"]
    schemas = crd_schemas()
    for obj in written["providers.yaml"] + written["provider-routes.yaml"]:
        if obj["apiVersion"].startswith("networking.istio.io"):
            jsonschema.validate(obj, schemas[(obj["apiVersion"], obj["kind"])])
        else:
            kubernetes_validate.validate(obj, "1.33", strict=True)
    # Only the sidecars the WasmPlugin runs in call providers on this data path.
    key_filters = [o for o in written["providers.yaml"] if o["kind"] == "EnvoyFilter"]
    assert [f["metadata"]["name"] for f in key_filters] == ["llm-provider-keys-sidecar-outbound"]
    (service,) = written["provider-routes.yaml"]
    routes = service["spec"]["http"]
    assert [r["name"] for r in routes] == ["provider-openai", "provider-azure", "fleet"]
    assert routes[0]["match"] == [{"headers": {"x-llm-provider": {"exact": "openai"}}}]
    assert {"authorization", "api-key"} <= set(routes[0]["headers"]["request"]["remove"])
    settings = IstioSettings()
    assert routes[-1]["route"] == [
        {"destination": {"host": settings.model_host, "port": {"number": settings.port}}}
    ]


def test_with_providers_the_decision_carries_the_provider_and_envoy_accepts_the_sidecar(
    tmp_path: Path,
) -> None:
    from extproc.policy.compile import load_policy

    settings = IstioSettings()
    providers = load_policy(str(PROVIDERS_POLICY)).provider_upstreams()
    envoy_filter = next(o for o in manifests(settings, providers=providers) if o["kind"] == "EnvoyFilter")
    config = sidecar_with(envoy_filter, settings)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f for f in chain["http_filters"]}
    assert [f["name"] for f in chain["http_filters"]][-5:] == [
        "envoy.filters.http.buffer",
        "apply-decision",
        "provider-path",
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.router",
    ]
    copied = [
        m["append"]["header"]["key"]
        for m in filters["apply-decision"]["typed_config"]["mutations"]["request_mutations"]
    ]
    assert {"x-llm-provider", "x-llm-provider-path"} <= set(copied)
    assert (
        "clearRouteCache" in filters["provider-path"]["typed_config"]["default_source_code"]["inline_string"]
    )
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without providers nothing of it is there.
    plain = next(o for o in manifests(settings) if o["kind"] == "EnvoyFilter")
    assert "provider-path" not in json.dumps(plain) and "x-llm-provider" not in json.dumps(plain)
