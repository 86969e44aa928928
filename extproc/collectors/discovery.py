"""Endpoint discovery: the interface, the static source, and the config registry.

A source is anything with ``async run(on_change)``: it runs until cancelled and calls
``on_change`` with the *complete* current endpoint tuple whenever that tuple changes (never
a delta, so a consumer can never miss one). Sources keep their last known set when their
backend fails transiently: losing DNS or the API server for a few seconds must not empty
the fleet. ``on_change`` is a plain function called on the event loop; it must not block.

DNS and Kubernetes live in their own modules and are imported only when configured, so a
static deployment never imports ``dns`` or ``kubernetes``.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from extproc.fleet.state import Endpoint

OnChange = Callable[[tuple[Endpoint, ...]], None]


@runtime_checkable
class DiscoverySource(Protocol):
    """Pluggable endpoint source; see the module docstring for the contract."""

    name: str

    async def run(self, on_change: OnChange) -> None: ...


def format_address(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed, as Envoy's override_host expects."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class EndpointTemplate:
    """Attributes a source cannot learn from its backend (DNS knows only addresses)."""

    pool: str = "default"
    models: tuple[str, ...] = ()
    gpu_class: str = "unknown"
    zone: str = ""

    def endpoint(
        self, address: str, *, zone: str | None = None, node: str = "", ready: bool = True
    ) -> Endpoint:
        return Endpoint(
            address=address,
            pool=self.pool,
            models=self.models,
            gpu_class=self.gpu_class,
            zone=self.zone if zone is None else zone,
            node=node,
            discovered_ready=ready,
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EndpointTemplate:
        return cls(
            pool=str(raw.get("pool", "default")),
            models=_str_tuple(raw.get("models", ())),
            gpu_class=str(raw.get("gpu_class", "unknown")),
            zone=str(raw.get("zone", "")),
        )


class StaticDiscovery:
    """A fixed list from config: reports it once, then idles until cancelled."""

    name = "static"

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)

    async def run(self, on_change: OnChange) -> None:
        on_change(self.endpoints)
        await asyncio.Event().wait()  # nothing changes; exit only by cancellation

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StaticDiscovery:
        """``endpoints``: list of strings or of {address, pool, models, gpu_class, zone, node}.

        Top-level ``pool``/``models``/``gpu_class``/``zone`` are defaults for every entry.
        """
        defaults = EndpointTemplate.from_dict(config)
        endpoints: list[Endpoint] = []
        for entry in config.get("endpoints", ()):
            if isinstance(entry, str):
                endpoints.append(defaults.endpoint(entry))
                continue
            if not isinstance(entry, Mapping) or "address" not in entry:
                raise ValueError(f"static endpoint needs an address: {entry!r}")
            endpoints.append(
                Endpoint(
                    address=str(entry["address"]),
                    pool=str(entry.get("pool", defaults.pool)),
                    models=_str_tuple(entry["models"]) if "models" in entry else defaults.models,
                    gpu_class=str(entry.get("gpu_class", defaults.gpu_class)),
                    zone=str(entry.get("zone", defaults.zone)),
                    node=str(entry.get("node", "")),
                )
            )
        return cls(endpoints)


class MultiDiscovery:
    """Several sources at once; reports the union (first source wins on a duplicate address)."""

    name = "multi"

    def __init__(self, sources: Sequence[DiscoverySource]) -> None:
        self.sources = tuple(sources)

    async def run(self, on_change: OnChange) -> None:
        latest: list[tuple[Endpoint, ...]] = [() for _ in self.sources]
        last: tuple[Endpoint, ...] | None = None

        def changed(index: int, endpoints: tuple[Endpoint, ...]) -> None:
            nonlocal last
            latest[index] = endpoints
            merged: dict[str, Endpoint] = {}
            for group in latest:
                for endpoint in group:
                    merged.setdefault(endpoint.address, endpoint)
            result = tuple(merged.values())
            if result != last:
                last = result
                on_change(result)

        def callback(index: int) -> OnChange:
            return lambda endpoints: changed(index, endpoints)

        async with asyncio.TaskGroup() as group:
            for index, source in enumerate(self.sources):
                group.create_task(source.run(callback(index)))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MultiDiscovery:
        return cls([build_discovery(sub) for sub in config.get("sources", ())])


SourceFactory = Callable[[Mapping[str, Any]], DiscoverySource]

# type -> "module:callable"; resolved lazily so optional dependencies load only when used.
_REGISTRY: dict[str, str | SourceFactory] = {
    "static": StaticDiscovery.from_config,
    "multi": MultiDiscovery.from_config,
    "dns": "extproc.collectors.dns:DNSDiscovery.from_config",
    "k8s": "extproc.collectors.k8s:EndpointSliceDiscovery.from_config",
    "kubernetes": "extproc.collectors.k8s:EndpointSliceDiscovery.from_config",
}


def register_discovery(kind: str, factory: str | SourceFactory) -> None:
    """Add a source type (a factory, or ``"module:attr.path"`` imported on first use)."""
    _REGISTRY[kind] = factory


def discovery_types() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def build_discovery(config: Mapping[str, Any]) -> DiscoverySource:
    """A source from a config mapping: ``{"type": "static" | "dns" | "k8s" | "multi", ...}``."""
    kind = str(config.get("type", "static"))
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise ValueError(f"unknown discovery type {kind!r}; known: {discovery_types()}")
    if isinstance(factory, str):
        module_name, _, path = factory.partition(":")
        resolved: Any = importlib.import_module(module_name)
        for attr in path.split("."):
            resolved = getattr(resolved, attr)
        factory = _REGISTRY[kind] = resolved
    assert callable(factory)
    return factory(config)


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    raise ValueError(f"expected a list of strings, got {value!r}")
