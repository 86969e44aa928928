"""`render istio --policy`: provider pools as Istio objects, validated offline like the rest."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from extproc import cli
from extproc.deploy.istio_providers import SDS_MOUNT, outbound_cluster
from extproc.policy.compile import load_policy
from tests.deploy.test_istio import DATA, KUBERNETES_VERSION, ROOT, crd_schemas, envoy_validate

POLICY = ROOT / "policies" / "providers.yaml"


def rendered(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    assert cli.main(["render", "istio", "--policy", str(POLICY), "--out", str(tmp_path)]) == 0
    return {p.name: [o for o in yaml.safe_load_all(p.read_text()) if o] for p in tmp_path.glob("*.yaml")}


def test_provider_objects_validate_against_the_istio_and_kubernetes_schemas(tmp_path: Path) -> None:
    parts = rendered(tmp_path)
    schemas = crd_schemas()
    kinds = []
    for obj in parts["providers.yaml"]:
        if obj["apiVersion"].startswith("networking.istio.io"):
            jsonschema.validate(obj, schemas[(obj["apiVersion"], obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        kinds.append(obj["kind"])
    assert sorted(kinds) == sorted(
        ["ServiceEntry", "DestinationRule"] * 2 + ["ConfigMap", "EnvoyFilter", "EnvoyFilter"]
    )
    rule = next(o for o in parts["providers.yaml"] if o["kind"] == "DestinationRule")
    (port,) = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    assert port["tls"]["mode"] == "SIMPLE" and port["tls"]["sni"] == "api.openai.com"
    # The schema bites: TLS origination with a misspelt mode is refused.
    broken = copy.deepcopy(rule)
    broken["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mod"] = "SIMPLE"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schemas[("networking.istio.io/v1", "DestinationRule")])
    service = next(o for o in parts["traffic.yaml"] if o["kind"] == "VirtualService")
    jsonschema.validate(service, schemas[("networking.istio.io/v1", "VirtualService")])
    first = service["spec"]["http"][0]
    assert first["match"] == [{"headers": {"x-llm-provider": {"exact": "openai"}}}]
    assert {"authorization", "api-key"} <= set(first["headers"]["request"]["remove"])


def test_the_credential_patch_makes_an_outbound_cluster_the_real_envoy_accepts(tmp_path: Path) -> None:
    parts = rendered(tmp_path)
    config = yaml.safe_load((DATA / "sidecar-envoy.yaml").read_text())
    upstreams = {u.host: u for u in load_policy(POLICY).provider_upstreams()}
    (envoy_filter,) = [
        o
        for o in parts["providers.yaml"]
        if o["kind"] == "EnvoyFilter" and "sidecar" in o["metadata"]["name"]
    ]
    for patch in envoy_filter["spec"]["configPatches"]:
        host = patch["match"]["cluster"]["service"]
        # Istio's outbound cluster for a DNS ServiceEntry with TLS origination, then our MERGE.
        cluster = {
            "name": outbound_cluster(upstreams[host]),
            "type": "STRICT_DNS",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": outbound_cluster(upstreams[host]),
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {"socket_address": {"address": host, "port_value": 443}}
                                }
                            }
                        ]
                    }
                ],
            },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": host,
                },
            },
        }
        cluster.update(copy.deepcopy(patch["patch"]["value"]))
        config["static_resources"]["clusters"].append(cluster)
    config.setdefault("node", {"id": "sidecar", "cluster": "sidecar"})
    # The ConfigMap mounted where the filter reads it.
    sds = next(o for o in parts["providers.yaml"] if o["kind"] == "ConfigMap")["data"]
    assert "AZURE_OPENAI_API_KEY" in sds["sds-azure.yaml"] and "api-key" in sds["sds-openai.yaml"]
    mount = tmp_path / "sds"
    mount.mkdir()
    for name, text in sds.items():
        (mount / name).write_text(text)
    text = json.dumps(config).replace(SDS_MOUNT, str(mount))
    result = envoy_validate(json.loads(text), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
