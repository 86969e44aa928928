"""Render the Envoy configs in envoy/ for a given set of ports and fleet endpoints."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from extproc.deploy import shipped
from extproc.deploy.envoy_providers import add_providers
from extproc.providers.upstream import ProviderUpstream

ENVOY_DIR = shipped("envoy")


@dataclass(slots=True)
class EnvoyPorts:
    listen_port: int = 10000
    admin_port: int = 9901
    extproc_port: int = 9002
    listen_host: str = "127.0.0.1"
    extproc_host: str = "127.0.0.1"


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    """The main listener's HTTP connection manager config in a parsed rendering (routes, filters)."""
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def lb_endpoints(addresses: Sequence[str], weights: Sequence[int] | None = None) -> str:
    """A YAML flow list of Envoy LbEndpoints for "host:port" addresses, optionally with each
    one's ``load_balancing_weight``."""
    entries: list[dict[str, Any]] = []
    for i, address in enumerate(addresses):
        host, _, port = address.rpartition(":")
        entry: dict[str, Any] = {
            "endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}
        }
        if weights is not None:
            entry["load_balancing_weight"] = int(weights[i])
        entries.append(entry)
    return json.dumps(entries)


def render(
    addresses: Sequence[str],
    ports: EnvoyPorts,
    *,
    template: Path | None = None,
    max_body_bytes: int = 4 * 1024 * 1024,
    message_timeout: str = "0.5s",
    shadow: Sequence[str] = (),
    extra: dict[str, str] | None = None,
    observe: bool = True,
    providers: Sequence[ProviderUpstream] = (),
    provider_addresses: Mapping[str, str] | None = None,
    sds_dir: Path | None = None,
    sds_out: Path | None = None,
) -> str:
    """``addresses``: the fleet Envoy may route to; ``shadow``: the mirror pool's endpoints;
    ``observe``: keep the observability-mode filter that streams responses to ext_proc;
    ``providers``: hosted provider pools (extproc.deploy.envoy_providers), their keys' SDS files
    written to ``sds_out`` (default ``sds_dir``, where Envoy reads them);
    ``provider_addresses``: connect there instead of resolving (tests, compose)."""
    text = (template or ENVOY_DIR / "local.yaml").read_text()
    if not observe:
        text = re.sub(r"\n *# >>> observer.*?# <<< observer\n", "\n", text, flags=re.S)
    values: dict[str, object] = {
        "admin_port": ports.admin_port,
        "listen_port": ports.listen_port,
        "listen_host": ports.listen_host,
        "extproc_port": ports.extproc_port,
        "extproc_host": ports.extproc_host,
        "buffer_limit_bytes": max_body_bytes * 2,
        "max_body_bytes": max_body_bytes,
        "message_timeout": message_timeout,
        "lb_endpoints": lb_endpoints(addresses),
        "shadow_endpoints": lb_endpoints(shadow),
    }
    values.update(extra or {})
    rendered = Template(text).substitute(values)
    if not providers:
        return rendered
    return with_providers(
        yaml.safe_load(rendered), providers, provider_addresses, sds_dir=sds_dir, sds_out=sds_out
    )


def with_providers(
    config: dict[str, Any],
    providers: Sequence[ProviderUpstream],
    provider_addresses: Mapping[str, str] | None,
    *,
    sds_dir: Path | None,
    sds_out: Path | None = None,
    fallback_routing: dict[str, Any] | None = None,
) -> str:
    """The parsed config with the providers' routes and clusters (extproc.deploy.envoy_providers),
    as YAML; their keys' SDS files are written to ``sds_out`` (default ``sds_dir``)."""
    files = add_providers(
        config, providers, sds_dir=sds_dir, addresses=provider_addresses, fallback_routing=fallback_routing
    )
    out = sds_out or sds_dir
    for name, content in files.items():
        assert out is not None
        (out / name).write_text(content)
    return yaml.safe_dump(config, sort_keys=False)
