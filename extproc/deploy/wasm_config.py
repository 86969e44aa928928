"""Render Envoy's config for the Wasm data path (extproc/deploy/envoy/wasm.yaml)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from extproc.deploy import shipped
from extproc.deploy.envoy_config import EnvoyPorts, connection_manager, lb_endpoints, render, with_providers
from extproc.headers import (
    COMPLEXITY_HEADER,
    DESTINATION_HEADER,
    ENVOY_MAX_RETRIES_HEADER,
    ENVOY_PER_TRY_TIMEOUT_MS_HEADER,
    ENVOY_RETRY_ON_HEADER,
    ENVOY_TIMEOUT_MS_HEADER,
    MIRROR_CLUSTER_HEADER,
    MODEL_HEADER,
    ORIGINAL_PATH_HEADER,
    POOL_HEADER,
    PRIORITY_HEADER,
    PROVIDER_HEADER,
    PROVIDER_PATH_HEADER,
    REQUESTED_MODEL_HEADER,
    RULE_HEADER,
    STREAM_HEADER,
    TENANT_HEADER,
    TIER_HEADER,
)
from extproc.providers.upstream import ProviderUpstream

# Every request header a decision may set. Where the filter cannot hold the request headers
# (Istio's WasmPlugin has no allow_on_headers_stop_iteration) it cannot set them from its body
# callback: it writes each as filter state and Envoy's header_mutation copies it. A header outside
# this list would be dropped there, so the brain's decide endpoint refuses to emit one.
DECISION_HEADERS = (
    DESTINATION_HEADER,
    MODEL_HEADER,
    STREAM_HEADER,
    COMPLEXITY_HEADER,
    TIER_HEADER,
    PRIORITY_HEADER,
    RULE_HEADER,
    MIRROR_CLUSTER_HEADER,
    ENVOY_TIMEOUT_MS_HEADER,
    ENVOY_MAX_RETRIES_HEADER,
    ENVOY_RETRY_ON_HEADER,
    ENVOY_PER_TRY_TIMEOUT_MS_HEADER,
    "content-length",  # the replacement body's, when the decision rewrites it
)


# ... and those of a decision that hands the request to a hosted provider (docs/providers.md),
# copied only when the config has providers. The provider's path travels in
# PROVIDER_PATH_HEADER (the brain's answer maps ":path" to it): header_mutation may not set
# pseudo-headers, so a Lua step moves it into :path and has Envoy pick the route again (the
# provider's route matches PROVIDER_HEADER).
PROVIDER_DECISION_HEADERS = (
    PROVIDER_HEADER,
    POOL_HEADER,
    TENANT_HEADER,
    REQUESTED_MODEL_HEADER,
    ORIGINAL_PATH_HEADER,
    PROVIDER_PATH_HEADER,
)

PROVIDER_PATH_LUA = f"""function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get("{PROVIDER_PATH_HEADER}")
  if path then
    headers:replace(":path", path)
    headers:remove("{PROVIDER_PATH_HEADER}")
    handle:clearRouteCache()
  end
end
"""


def wasm_module() -> Path:
    return shipped("wasm", "llm_extproc.wasm")


def _mutations(names: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "append": {
                "header": {"key": name, "value": f"%FILTER_STATE(wasm.{name}:PLAIN)%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        }
        for name in names
    ]


WASM_FILTER = "envoy.filters.http.wasm"
APPLY_DECISION_FILTER = "apply-decision"


def passing_headers_filters(max_body_bytes: int) -> list[dict[str, Any]]:
    """What follows the Wasm filter where it cannot hold the request headers: Envoy's buffer
    filter holds them until the whole body has been through the filter, and header_mutation
    copies the decision's headers from filter state wasm.<name> (an absent value adds none)."""
    return [
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": max_body_bytes * 2,
            },
        },
        {
            "name": APPLY_DECISION_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": _mutations(DECISION_HEADERS)},
            },
        },
    ]


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """The filter's plugin configuration (wasm/assembly/index.ts, Settings)."""

    poll_ms: int = 100
    decide_timeout_ms: int = 1000
    report_every_ticks: int = 10
    observe: bool = True
    # Per-request records per report batch (about 1 s); more are counted as dropped.
    max_records: int = 1000
    # The filter holds the request headers until it has decided (Envoy's
    # allow_on_headers_stop_iteration) and writes the decision into them; False: they pass on to
    # Envoy's buffer filter and the decision travels as filter state (passing_headers_filters).
    hold_headers: bool = True

    def json(self) -> str:
        return json.dumps(
            {
                "brain_cluster": "llm_brain",
                "brain_authority": "llm-brain",
                "poll_ms": self.poll_ms,
                "decide_timeout_ms": self.decide_timeout_ms,
                "report_every_ticks": self.report_every_ticks,
                "observe": self.observe,
                "max_records": self.max_records,
                "hold_headers": self.hold_headers,
            }
        )


DEFAULT_SETTINGS = FilterSettings()


def render_wasm(
    addresses: Sequence[str],
    *,
    listen_port: int,
    admin_port: int,
    brain_port: int,
    listen_host: str = "127.0.0.1",
    brain_host: str = "127.0.0.1",
    max_body_bytes: int = 4 * 1024 * 1024,
    shadow: Sequence[str] = (),
    settings: FilterSettings = DEFAULT_SETTINGS,
    module: Path | None = None,
    providers: Sequence[ProviderUpstream] = (),
    provider_addresses: Mapping[str, str] | None = None,
    sds_dir: Path | None = None,
    extproc_port: int = 0,
) -> str:
    """``providers``: hosted provider pools, as in extproc.deploy.envoy_config.render; their
    fallback hop and attempt observer talk ext_proc to the brain's gRPC port ``extproc_port``.
    ``settings.hold_headers=False``: the chain for an Envoy whose Wasm filter cannot hold the
    request headers (Istio's WasmPlugin), see passing_headers_filters."""
    text = shipped("envoy", "wasm.yaml").read_text()
    rendered = Template(text).substitute(
        admin_port=admin_port,
        listen_port=listen_port,
        listen_host=listen_host,
        brain_host=brain_host,
        brain_port=brain_port,
        buffer_limit_bytes=max_body_bytes * 2,
        lb_endpoints=lb_endpoints(addresses),
        shadow_endpoints=lb_endpoints(shadow),
        plugin_configuration=settings.json(),
        wasm_path=json.dumps(str(module or wasm_module())),
    )
    if not settings.hold_headers:
        passing = yaml.safe_load(rendered)
        filters = _http_filters(passing)
        at = next(i for i, f in enumerate(filters) if f["name"] == WASM_FILTER)
        del filters[at]["typed_config"]["config"]["allow_on_headers_stop_iteration"]
        filters[at + 1 : at + 1] = passing_headers_filters(max_body_bytes)
        _mirror_from_the_fleet_route(passing)
        rendered = yaml.safe_dump(passing, sort_keys=False)
    if not providers:
        return rendered
    # The ext_proc data path's config for the same brain: its routing filter decides the
    # fallback hop (rare: a provider attempt failed), its cluster reaches the brain's gRPC port.
    extproc = yaml.safe_load(
        render(
            addresses,
            EnvoyPorts(extproc_port=extproc_port, extproc_host=brain_host),
            max_body_bytes=max_body_bytes,
        )
    )
    routing = next(f for f in _http_filters(extproc) if f["name"] == "envoy.filters.http.ext_proc")
    config = yaml.safe_load(rendered)
    config["static_resources"]["clusters"].append(
        next(c for c in extproc["static_resources"]["clusters"] if c["name"] == "extproc")
    )
    config["layered_runtime"] = extproc["layered_runtime"]
    add_provider_decision(_http_filters(config))
    return with_providers(config, providers, provider_addresses, sds_dir=sds_dir, fallback_routing=routing)


def _mirror_from_the_fleet_route(config: dict[str, Any]) -> None:
    """One fleet route carrying the mirror policy (changed in place). The template keeps it on a
    route only mirrored requests match, which needs the route picked again once the decision's
    headers are in; where they arrive through header_mutation nothing picks it again, and the
    router reads the mirror header itself."""
    routes: list[dict[str, Any]] = connection_manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    at = next(
        i
        for i, r in enumerate(routes)
        if any(h.get("name") == MIRROR_CLUSTER_HEADER for h in r["match"].get("headers", ()))
    )
    mirrored = routes.pop(at)
    routes[at]["route"]["request_mirror_policies"] = mirrored["route"]["request_mirror_policies"]


PROVIDER_PATH_FILTER = "provider-path"


def add_provider_decision(filters: list[dict[str, Any]]) -> None:
    """Let a decision that names a hosted provider through: the Lua step after the decision
    sets the provider's path and re-picks the route, and where the decision travels as filter
    state apply-decision also copies the provider headers. ``filters``: an HTTP filter chain
    holding the Wasm filter (changed in place)."""
    names = [f["name"] for f in filters]
    if APPLY_DECISION_FILTER in names:
        at = names.index(APPLY_DECISION_FILTER)
        filters[at]["typed_config"]["mutations"]["request_mutations"] += _mutations(PROVIDER_DECISION_HEADERS)
    else:
        at = names.index(WASM_FILTER)
    filters.insert(
        at + 1,
        {
            "name": PROVIDER_PATH_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": PROVIDER_PATH_LUA},
            },
        },
    )


def _http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = connection_manager(config)["http_filters"]
    return filters
