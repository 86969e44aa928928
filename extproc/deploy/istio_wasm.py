"""Istio manifests for the Wasm data path: a WasmPlugin for the filter, an EnvoyFilter for the
native filters around it and the override_host cluster policy (docs/wasm.md).

The filters and their order are taken from extproc/deploy/envoy/wasm.yaml, so the mesh runs the
chain the local stack and the tests run:

    strip-client-routing-headers → llm-extproc (Wasm) → buffer → apply-decision
    → header_to_metadata → router

Istio names a WasmPlugin's filter "<namespace>.<name>" and, in the default phase, puts it just
before the router; the EnvoyFilter inserts the header stripping before it and the decision
plumbing after it. The brain is llm-extproc's Service on its brain port (Istio's outbound
cluster for it is what the filter's HTTP calls name).

With a policy's hosted providers (`render istio-wasm --policy FILE`), apply-decision also copies
the provider headers and a Lua step (as in the local Envoy config) sets the provider's path and
re-picks the route; providers.yaml holds the ServiceEntries, DestinationRules and credential
filters the ext_proc render makes, and provider-routes.yaml a VirtualService for the model host
whose first routes send a decision naming a provider to it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import yaml

from extproc.deploy.envoy_config import connection_manager
from extproc.deploy.istio import ENVOY_CONTROL_HEADERS, IstioSettings, envoy_cluster_patch, extproc_objects
from extproc.deploy.istio_providers import provider_objects, provider_routes
from extproc.deploy.wasm_config import (
    DEFAULT_SETTINGS,
    PROVIDER_PATH_FILTER,
    FilterSettings,
    add_provider_decision,
    render_wasm,
)
from extproc.providers.upstream import ProviderUpstream

BRAIN_PORT = 9003
PLUGIN_NAME = "llm-extproc"
# Where the module is found: an OCI image built from extproc/deploy/wasm/llm_extproc.wasm, or a
# file the pods mount (file:// is read by the sidecar itself).
DEFAULT_MODULE_URL = "oci://ghcr.io/llm-extproc/llm-extproc-wasm:0.1.0"
MESH_SETTINGS = dataclasses.replace(DEFAULT_SETTINGS, hold_headers=False)


def brain_cluster(s: IstioSettings) -> str:
    return f"outbound|{BRAIN_PORT}||{s.extproc_host}"


def _local_filters(with_providers: bool = False) -> dict[str, dict[str, Any]]:
    # A WasmPlugin cannot set allow_on_headers_stop_iteration: the decision travels as filter
    # state through Envoy's buffer and header_mutation filters.
    config = yaml.safe_load(
        render_wasm(
            ["10.0.0.1:8000"], listen_port=10000, admin_port=9901, brain_port=1, settings=MESH_SETTINGS
        )
    )
    filters: list[dict[str, Any]] = connection_manager(config)["http_filters"]
    if with_providers:
        add_provider_decision(filters)
    return {f["name"]: f for f in filters}


def plugin_config(s: IstioSettings, settings: FilterSettings = MESH_SETTINGS) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(settings.json())
    config["brain_cluster"] = brain_cluster(s)
    config["brain_authority"] = f"{s.extproc_host}:{BRAIN_PORT}"
    return config


def wasm_plugin(s: IstioSettings, url: str = DEFAULT_MODULE_URL, sha256: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(s.client_labels)},
        "url": url,
        "type": "HTTP",
        # The default phase: last before the router, after Istio's own filters.
        "phase": "UNSPECIFIED_PHASE",
        # A trap or a module that does not load lets requests through undecided: Envoy's
        # least_request fallback routes them, as when ext_proc fails open.
        "failStrategy": "FAIL_OPEN",
        "pluginName": PLUGIN_NAME,
        "pluginConfig": plugin_config(s),
    }
    if sha256:
        spec["sha256"] = sha256
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": PLUGIN_NAME, "namespace": s.filter_namespace},
        "spec": spec,
    }


def wasm_filter_name(s: IstioSettings) -> str:
    """The HTTP filter name Istio gives the WasmPlugin's filter."""
    return f"{s.filter_namespace}.{PLUGIN_NAME}"


def envoy_filter(s: IstioSettings, with_providers: bool = False) -> dict[str, Any]:
    local = _local_filters(with_providers)
    strip = copy.deepcopy(local["strip-client-routing-headers"])
    # In the mesh the caller is the local app, which Envoy may treat as internal.
    strip["typed_config"]["mutations"]["request_mutations"] += [{"remove": n} for n in ENVOY_CONTROL_HEADERS]
    listener: dict[str, Any] = {
        "portNumber": s.port,
        "filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}},
    }

    def before(sub_filter: str, value: dict[str, Any]) -> dict[str, Any]:
        match = copy.deepcopy(listener)
        match["filterChain"]["filter"]["subFilter"] = {"name": sub_filter}
        return {
            "applyTo": "HTTP_FILTER",
            "match": {"context": "SIDECAR_OUTBOUND", "listener": match},
            "patch": {"operation": "INSERT_BEFORE", "value": value},
        }

    patches = [before(wasm_filter_name(s), strip)]
    after_the_plugin = ["envoy.filters.http.buffer", "apply-decision"]
    after_the_plugin += [PROVIDER_PATH_FILTER] if with_providers else []
    after_the_plugin += ["envoy.filters.http.header_to_metadata"]
    patches += [before("envoy.filters.http.router", copy.deepcopy(local[name])) for name in after_the_plugin]
    patches.append(
        {
            "applyTo": "CLUSTER",
            "match": {
                "context": "SIDECAR_OUTBOUND",
                "cluster": {"service": s.model_host, "portNumber": s.port},
            },
            "patch": {"operation": "MERGE", "value": envoy_cluster_patch()},
        }
    )
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "llm-extproc-wasm", "namespace": s.filter_namespace},
        "spec": {"workloadSelector": {"labels": dict(s.client_labels)}, "configPatches": patches},
    }


def brain_objects(s: IstioSettings) -> list[dict[str, Any]]:
    """llm-extproc's Deployment and Service as the ext_proc render makes them, serving as the
    filter's brain: `serve --data-path wasm` and the brain port on the Service."""
    objects = copy.deepcopy(extproc_objects(s))
    for obj in objects:
        if obj["kind"] == "Deployment":
            container = obj["spec"]["template"]["spec"]["containers"][0]
            container["args"] += ["--data-path", "wasm", "--brain-port", str(BRAIN_PORT)]
            container["ports"].append({"name": "http-brain", "containerPort": BRAIN_PORT})
        elif obj["kind"] == "Service":
            obj["spec"]["ports"].append(
                {"name": "http-brain", "port": BRAIN_PORT, "targetPort": BRAIN_PORT, "appProtocol": "http"}
            )
    return objects


def manifests(
    s: IstioSettings,
    url: str = DEFAULT_MODULE_URL,
    sha256: str | None = None,
    providers: Sequence[ProviderUpstream] = (),
) -> list[dict[str, Any]]:
    return [*brain_objects(s), wasm_plugin(s, url, sha256), envoy_filter(s, with_providers=bool(providers))]


def provider_route_service(s: IstioSettings, providers: Sequence[ProviderUpstream]) -> dict[str, Any]:
    """The model host's VirtualService: a decision naming a provider goes to it, the rest to the
    model Service (where override_host picks the endpoint). Merge the provider routes into your
    own VirtualService for the host if you have one: Istio takes one per host."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": f"{s.service}-providers", "namespace": s.model_namespace},
        "spec": {
            "hosts": [s.model_host],
            "http": [
                *provider_routes(providers),
                {
                    "name": "fleet",
                    "route": [{"destination": {"host": s.model_host, "port": {"number": s.port}}}],
                },
            ],
        },
    }


def parts(s: IstioSettings, providers: Sequence[ProviderUpstream] = ()) -> dict[str, list[dict[str, Any]]]:
    """What `render istio-wasm [--policy FILE]` writes, file name -> objects."""
    written = {"wasm.yaml": manifests(s, providers=providers)}
    if providers:
        contexts = [("SIDECAR_OUTBOUND", s.client_labels)]
        written["providers.yaml"] = provider_objects(providers, s.namespace, s.filter_namespace, contexts)
        written["provider-routes.yaml"] = [provider_route_service(s, providers)]
    return written


def materialised_wasm_filter(s: IstioSettings, module_path: str) -> dict[str, Any]:
    """The HTTP filter Istio's agent makes of the WasmPlugin (module fetched to a local file):
    what the offline validation inserts before applying the EnvoyFilter."""
    wasm = copy.deepcopy(_local_filters()["envoy.filters.http.wasm"])
    wasm["name"] = wasm_filter_name(s)
    config = wasm["typed_config"]["config"]
    config["configuration"]["value"] = json.dumps(plugin_config(s))
    config["vm_config"]["code"] = {"local": {"filename": module_path}}
    return wasm
