"""The discovery interface, the static source and the config registry."""

from __future__ import annotations

import asyncio

import pytest

from extproc.collectors.discovery import (
    DiscoverySource,
    EndpointTemplate,
    MultiDiscovery,
    OnChange,
    StaticDiscovery,
    build_discovery,
    discovery_types,
    register_discovery,
)
from extproc.fleet.state import Endpoint


async def first_report(source: DiscoverySource) -> tuple[Endpoint, ...]:
    seen: asyncio.Queue[tuple[Endpoint, ...]] = asyncio.Queue()
    task = asyncio.create_task(source.run(seen.put_nowait))
    try:
        return await asyncio.wait_for(seen.get(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_static_from_config() -> None:
    source = build_discovery(
        {
            "type": "static",
            "models": ["llama-3-8b"],
            "gpu_class": "a100",
            "endpoints": [
                "10.0.0.1:8000",
                {
                    "address": "10.0.0.2:8000",
                    "pool": "big",
                    "models": ["llama-70b"],
                    "gpu_class": "h100",
                    "zone": "z1",
                },
            ],
        }
    )
    assert isinstance(source, StaticDiscovery) and isinstance(source, DiscoverySource)
    endpoints = await first_report(source)
    assert endpoints == (
        Endpoint("10.0.0.1:8000", models=("llama-3-8b",), gpu_class="a100"),
        Endpoint("10.0.0.2:8000", pool="big", models=("llama-70b",), gpu_class="h100", zone="z1"),
    )


async def test_static_runs_until_cancelled() -> None:
    source = StaticDiscovery([Endpoint("a:1")])
    calls: list[tuple[Endpoint, ...]] = []
    task = asyncio.create_task(source.run(calls.append))
    await asyncio.sleep(0.01)
    assert calls == [(Endpoint("a:1"),)] and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="unknown discovery type"):
        build_discovery({"type": "carrier-pigeon"})
    with pytest.raises(ValueError, match="needs an address"):
        build_discovery({"type": "static", "endpoints": [{"pool": "x"}]})
    assert {"static", "dns", "k8s", "multi"} <= set(discovery_types())


async def test_multi_merges_and_registry_accepts_plugins() -> None:
    class Pushed:
        name = "pushed"

        def __init__(self) -> None:
            self.callback: OnChange | None = None

        async def run(self, on_change: OnChange) -> None:
            self.callback = on_change
            on_change((Endpoint("b:1", pool="pushed"), Endpoint("a:1", pool="dup")))
            await asyncio.Event().wait()

    pushed = Pushed()
    register_discovery("pushed", lambda config: pushed)
    source = build_discovery(
        {"type": "multi", "sources": [{"type": "static", "endpoints": ["a:1"]}, {"type": "pushed"}]}
    )
    assert isinstance(source, MultiDiscovery)
    seen: list[tuple[Endpoint, ...]] = []
    task = asyncio.create_task(source.run(seen.append))
    try:
        for _ in range(100):
            if seen and len(seen[-1]) == 2:
                break
            await asyncio.sleep(0.01)
        # Union; the first source wins the duplicate address.
        assert seen[-1] == (Endpoint("a:1"), Endpoint("b:1", pool="pushed"))
        assert pushed.callback is not None
        count = len(seen)
        pushed.callback((Endpoint("b:1", pool="pushed"), Endpoint("a:1", pool="dup")))
        assert len(seen) == count  # unchanged union is not re-reported
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_template() -> None:
    template = EndpointTemplate.from_dict({"pool": "p", "models": "m", "zone": "z"})
    assert template.endpoint("x:1", node="n", ready=False) == Endpoint(
        "x:1", pool="p", models=("m",), zone="z", node="n", discovered_ready=False
    )
    assert template.endpoint("x:1", zone="other").zone == "other"
