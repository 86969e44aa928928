"""Istio and Kubernetes manifests, validated offline against the real schemas and the real Envoy."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from extproc import cli
from extproc.deploy.istio import IstioSettings, dump, manifests
from extproc.devstack.stack import envoy_binary

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data" / "istio"
KUBERNETES_VERSION = "1.33"


def shipped() -> list[dict[str, Any]]:
    return [
        obj
        for path in sorted((ROOT / "istio").glob("*.yaml"))
        for obj in yaml.safe_load_all(path.read_text())
        if obj
    ]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields, as the API server's strict field validation (kubectl's default)
    does: CRD schemas only list properties, and unknown ones would otherwise be pruned silently."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("oneOf", "anyOf", "allOf"):
        if key in out:
            out[key] = [strict(branch) for branch in out[key]]
    return out


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for crd in yaml.safe_load_all((DATA / "crds.yaml").read_text()):
        if crd:
            for version in crd["spec"]["versions"]:
                api = f"{crd['spec']['group']}/{version['name']}"
                schema = version["schema"]["openAPIV3Schema"]
                # apiVersion, kind and metadata are the API server's; the CRD schema covers spec.
                schema = {
                    **schema,
                    "properties": {**schema["properties"], "spec": strict(schema["properties"]["spec"])},
                }
                schemas[(api, crd["spec"]["names"]["kind"])] = schema
    return schemas


def test_istio_directory_is_exactly_the_render_output_for_the_defaults(tmp_path: Path) -> None:
    assert cli.main(["render", "istio", "--out", str(tmp_path)]) == 0
    rendered = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert rendered == {p.name: p.read_text() for p in (ROOT / "istio").glob("*.yaml")}


def test_every_kubernetes_object_validates_against_the_kubernetes_schema() -> None:
    kinds = []
    for obj in shipped():
        if obj["apiVersion"].startswith("networking.istio.io"):
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        kinds.append(obj["kind"])
    for kind in (
        "Deployment",
        "Service",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ):
        assert kind in kinds


def test_a_broken_kubernetes_object_is_rejected() -> None:
    deployment = next(o for o in shipped() if o["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 9002
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_istio_object_validates_against_istios_crd_schema() -> None:
    schemas = crd_schemas()
    checked = []
    for obj in shipped():
        if not obj["apiVersion"].startswith("networking.istio.io"):
            continue
        schema = schemas[(obj["apiVersion"], obj["kind"])]
        jsonschema.validate(obj, schema)
        checked.append(obj["kind"])
    assert sorted(checked) == ["DestinationRule", "EnvoyFilter", "EnvoyFilter", "VirtualService"]
    # The schema does bite: a misspelt field and a wrong type are refused.
    for path, value in ((("retries", "atempts"), 1), (("retries", "attempts"), "two")):
        service = copy.deepcopy(next(o for o in shipped() if o["kind"] == "VirtualService"))
        service["spec"]["http"][0][path[0]][path[1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(service, schemas[("networking.istio.io/v1", "VirtualService")])


def apply_envoy_filter(config: dict[str, Any], envoy_filter: dict[str, Any], context: str) -> int:
    """Istio's patch semantics for the operations we use; returns how many patches applied."""
    applied = 0
    for patch in envoy_filter["spec"]["configPatches"]:
        match = patch["match"]
        assert match["context"] == context
        operation, value = patch["patch"]["operation"], patch["patch"]["value"]
        if patch["applyTo"] == "HTTP_FILTER":
            assert operation == "INSERT_BEFORE"
            listener_match = match["listener"]
            for listener in config["static_resources"]["listeners"]:
                port = listener["address"]["socket_address"]["port_value"]
                if "portNumber" in listener_match and listener_match["portNumber"] != port:
                    continue
                for chain in listener["filter_chains"]:
                    for network_filter in chain["filters"]:
                        if network_filter["name"] != listener_match["filterChain"]["filter"]["name"]:
                            continue
                        http_filters = network_filter["typed_config"]["http_filters"]
                        names = [f["name"] for f in http_filters]
                        target = listener_match["filterChain"]["filter"]["subFilter"]["name"]
                        http_filters.insert(names.index(target), copy.deepcopy(value))
                        applied += 1
        elif patch["applyTo"] == "HTTP_ROUTE":
            assert operation == "MERGE"
            route_match = match["routeConfiguration"]
            for listener in config["static_resources"]["listeners"]:
                port = listener["address"]["socket_address"]["port_value"]
                if "portNumber" in route_match and route_match["portNumber"] != port:
                    continue
                for chain in listener["filter_chains"]:
                    for network_filter in chain["filters"]:
                        route_config = network_filter["typed_config"]["route_config"]
                        for host in route_config["virtual_hosts"]:
                            for route in host["routes"]:
                                if route.get("name") == route_match["vhost"]["route"]["name"]:
                                    route.update(copy.deepcopy(value))
                                    applied += 1
        elif patch["applyTo"] == "CLUSTER":
            assert operation == "MERGE"
            name = f"outbound|{match['cluster']['portNumber']}||{match['cluster']['service']}"
            for cluster in config["static_resources"]["clusters"]:
                if cluster["name"] == name:
                    if "lb_policy" in cluster and "load_balancing_policy" in value:
                        del cluster["lb_policy"]  # the two are one proto oneof: the new one wins
                    cluster.update(copy.deepcopy(value))
                    applied += 1
    return applied


def envoy_validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )


def filters() -> dict[str, dict[str, Any]]:
    return {
        o["spec"]["configPatches"][0]["match"]["context"]: o for o in shipped() if o["kind"] == "EnvoyFilter"
    }


@pytest.mark.parametrize(
    ("context", "base"), [("SIDECAR_OUTBOUND", "sidecar-envoy.yaml"), ("GATEWAY", "gateway-envoy.yaml")]
)
def test_envoy_filter_patches_make_a_config_the_real_envoy_accepts(
    context: str, base: str, tmp_path: Path
) -> None:
    config = yaml.safe_load((DATA / base).read_text())
    envoy_filter = filters()[context]
    assert apply_envoy_filter(config, envoy_filter, context) == len(envoy_filter["spec"]["configPatches"])
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ]
    names = [f["name"] for f in chain]
    # Our filters sit right before the router, in the local stack's order.
    assert names[-4:] == [
        "strip-client-routing-headers",
        "envoy.filters.http.ext_proc",
        "llm-observe",
        "envoy.filters.http.router",
    ]
    # Audio uploads: the VirtualService's "audio" route gets the local stack's BUFFERED_PARTIAL.
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]["routes"]
    audio = next(r for r in routes if r.get("name") == "audio")
    override = audio["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
    assert override["processing_mode"]["request_body_mode"] == "BUFFERED_PARTIAL"
    assert "typed_per_filter_config" not in routes[-1]  # every other route keeps BUFFERED
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_audio_route_is_named_for_the_envoy_filter_and_comes_first() -> None:
    service = next(o for o in shipped() if o["kind"] == "VirtualService")
    first = service["spec"]["http"][0]
    assert first["name"] == "audio" and first["match"] == [{"uri": {"prefix": "/v1/audio/"}}]
    for envoy_filter in filters().values():
        route_patches = [p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_ROUTE"]
        assert [p["match"]["routeConfiguration"]["vhost"]["route"]["name"] for p in route_patches] == [
            "audio"
        ]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda f: f["spec"]["configPatches"][1]["patch"]["value"]["typed_config"].__setitem__(
            "@type", "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcesor"
        ),
        lambda f: f["spec"]["configPatches"][1]["patch"]["value"]["typed_config"].__setitem__(
            "failure_mode_alow", True
        ),
        lambda f: f["spec"]["configPatches"][-1]["patch"]["value"]["load_balancing_policy"]["policies"][0][
            "typed_extension_config"
        ]["typed_config"].__setitem__("override_host_source", []),
    ],
    ids=["type-url-typo", "field-typo", "lb-policy-field-typo"],
)
def test_a_typo_in_a_patch_fails_envoy_validation(breakage: Any, tmp_path: Path) -> None:
    config = yaml.safe_load((DATA / "sidecar-envoy.yaml").read_text())
    envoy_filter = copy.deepcopy(filters()["SIDECAR_OUTBOUND"])
    breakage(envoy_filter)
    apply_envoy_filter(config, envoy_filter, "SIDECAR_OUTBOUND")
    assert envoy_validate(config, tmp_path).returncode != 0


def test_the_endpoint_list_is_read_from_metadata_only_and_ext_proc_fails_open() -> None:
    sidecar = filters()["SIDECAR_OUTBOUND"]
    cluster_patch = sidecar["spec"]["configPatches"][-1]["patch"]["value"]
    override = cluster_patch["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]
    assert override["override_host_sources"] == [
        {"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}
    ]
    ext_proc = sidecar["spec"]["configPatches"][1]["patch"]["value"]["typed_config"]
    assert ext_proc["failure_mode_allow"] is True
    assert (
        ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]
        == "outbound|9002||llm-extproc.llm-extproc.svc.cluster.local"
    )
    assert ext_proc["mutation_rules"] == {"allow_envoy": True}


def test_render_fills_in_the_names_it_is_given() -> None:
    settings = IstioSettings(namespace="router", model_namespace="ml", service="mixtral", port=9000)
    text = dump([o for objects in manifests(settings).values() for o in objects])
    assert (
        "outbound|9000||mixtral.ml.svc.cluster.local" not in text
    )  # Istio matches service+port, not the name
    objects = list(yaml.safe_load_all(text))
    sidecar = next(o for o in objects if o["kind"] == "EnvoyFilter")
    assert sidecar["spec"]["configPatches"][-1]["match"]["cluster"] == {
        "service": "mixtral.ml.svc.cluster.local",
        "portNumber": 9000,
    }
    ext_proc = sidecar["spec"]["configPatches"][1]["patch"]["value"]["typed_config"]
    assert (
        ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]
        == "outbound|9002||llm-extproc.router.svc.cluster.local"
    )
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "llm-extproc"
    )
    assert "--k8s-service=mixtral" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    role = next(o for o in objects if o["kind"] == "Role")
    assert role["metadata"]["namespace"] == "ml" and role["rules"][0]["verbs"] == ["get", "list", "watch"]
