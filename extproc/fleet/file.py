"""Read a static fleet file: the endpoints a deployment (or the local stack) routes to.

Format (JSON or YAML)::

    endpoints:
      - address: 127.0.0.1:8001     # host:port, exactly what Envoy's override_host receives
        models: [llama-3-8b]
        pool: fast                  # optional, default "default"
        gpu_class: a100             # optional
        zone: zone-a                # optional
        node: node-1                # optional

The simulator's ready file (`llm-extproc sim --ready-file`) has this shape too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from extproc.fleet.state import Endpoint


class FleetFileError(ValueError):
    pass


def _endpoint(i: int, entry: Any, source: str) -> Endpoint:
    where = f"{source}: endpoints[{i}]"
    if not isinstance(entry, dict):
        raise FleetFileError(f"{where}: expected a mapping, got {type(entry).__name__}")
    address = entry.get("address")
    if not isinstance(address, str) or ":" not in address:
        raise FleetFileError(f"{where}.address: expected 'host:port', got {address!r}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FleetFileError(f"{where}.address: expected 'host:port' with a port 1-65535, got {address!r}")
    models = entry.get("models", [])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise FleetFileError(f"{where}.models: expected a list of model names")
    return Endpoint(
        address=address,
        pool=str(entry.get("pool") or "default"),
        models=tuple(models),
        gpu_class=str(entry.get("gpu_class") or "unknown"),
        zone=str(entry.get("zone") or ""),
        node=str(entry.get("node") or ""),
    )


def parse_fleet(data: Any, source: str = "<fleet>") -> list[Endpoint]:
    if not isinstance(data, dict) or not isinstance(data.get("endpoints"), list):
        raise FleetFileError(f"{source}: expected a mapping with an 'endpoints' list")
    endpoints = [_endpoint(i, e, source) for i, e in enumerate(data["endpoints"])]
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.address in seen:
            raise FleetFileError(f"{source}: endpoint {endpoint.address} is listed twice")
        seen.add(endpoint.address)
    return endpoints


def load_fleet_file(path: Path) -> list[Endpoint]:
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise FleetFileError(f"{path}: cannot parse: {exc}") from None
    return parse_fleet(data, str(path))
