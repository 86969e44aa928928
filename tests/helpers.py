"""Builders for Envoy ext_proc messages, shared by the server tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.config import ServerConfig
from extproc.fleet.state import (
    WORK_COUNTERS,
    Endpoint,
    EndpointMetrics,
    FleetSnapshot,
    FleetState,
    InFlight,
    IntArray,
    build_snapshot,
)
from extproc.router import Router
from extproc.scheduler.picking import PickContext
from extproc.server import ExternalProcessor


def headers_message(
    path: str = "/v1/chat/completions", method: str = "POST", end_of_stream: bool = False, **extra: str
) -> ep.ProcessingRequest:
    pairs = [(":path", path), (":method", method), ("content-type", "application/json")]
    pairs += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
            ),
            end_of_stream=end_of_stream,
        )
    )


def body_message(body: object | bytes) -> ep.ProcessingRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=raw, end_of_stream=True))


def chat(model: str = "llama-3-8b", text: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def set_headers(response: ep.ProcessingResponse) -> dict[str, str]:
    common = getattr(response, response.WhichOneof("response")).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def destination_metadata(response: ep.ProcessingResponse) -> str:
    return str(
        response.dynamic_metadata.fields["envoy.lb"]
        .struct_value.fields["x-gateway-destination-endpoint"]
        .string_value
    )


def make_processor(
    addresses: list[str], *, models: tuple[str, ...] = ("llama-3-8b",), config: ServerConfig | None = None
) -> tuple[ExternalProcessor, FleetState]:
    fleet = FleetState()
    endpoints = [Endpoint(a, models=models) for a in addresses]
    fleet.publish(
        build_snapshot(
            endpoints, {a: EndpointMetrics(scraped_at=0.0) for a in addresses}, version=1, now=0.0
        ),
        synced=True,
    )
    config = config or ServerConfig()
    router = Router(config, fleet, LeastInFlightPicker(), InFlight())
    return ExternalProcessor(config, router), fleet


def fleet_snapshot(
    n: int,
    *,
    waiting: list[float] | None = None,
    running: list[float] | None = None,
    kv: list[float] | None = None,
    gpu: list[str] | None = None,
    zones: list[str] | None = None,
    nodes: list[str] | None = None,
    healthy: list[bool] | None = None,
    scraped_at: list[float] | None = None,
    ttft: list[float] | None = None,
    loras: list[tuple[str, ...]] | None = None,
    counters: list[tuple[float, float, float, float]] | None = None,
    now: float = 100.0,
    ready_at: float = 0.0,
):  # type: ignore[no-untyped-def]
    """A snapshot of n endpoints serving "m", with per-endpoint metric overrides.

    ``counters``: per endpoint (prompt tokens, prefill s, decode tokens, decode s[, requests]),
    cumulative.
    """
    import math

    endpoints = [
        Endpoint(
            f"10.0.0.{i + 1}:8000",
            models=("m",),
            gpu_class=(gpu or ["a100"] * n)[i],
            zone=(zones or [""] * n)[i],
            node=(nodes or [""] * n)[i],
        )
        for i in range(n)
    ]
    metrics = {
        e.address: EndpointMetrics(
            waiting=(waiting or [0.0] * n)[i],
            running=(running or [0.0] * n)[i],
            kv_usage=(kv or [0.0] * n)[i],
            healthy=(healthy or [True] * n)[i],
            scraped_at=(scraped_at or [now] * n)[i],
            ttft_mean_s=(ttft or [math.nan] * n)[i],
            running_lora_adapters=(loras or [()] * n)[i],
            **(
                dict(zip(WORK_COUNTERS, counters[i], strict=False))  # type: ignore[arg-type]
                if counters
                else {}
            ),
        )
        for i, e in enumerate(endpoints)
    }
    return build_snapshot(endpoints, metrics, version=1, now=ready_at)


def pick_view(
    snapshot,
    *,
    inflight=None,
    prompt="",
    session=None,
    zone=None,
    lora=None,
    priority=0,
    now=100.0,
    gpu_weights=None,
):  # type: ignore[no-untyped-def]
    """A view as the scheduler builds it; speeds from ``gpu_weights`` as a prior (A100 3x a T4
    by default) since a bare snapshot carries no evidence."""
    import numpy as np

    from extproc.scheduler.config import SchedulerConfig
    from extproc.scheduler.picking import PickContext
    from extproc.scheduler.scheduler import Scheduler

    rows = np.arange(snapshot.size, dtype=np.intp)
    ctx = PickContext(
        model="m",
        prompt_text=prompt,
        session_key=session,
        zone=zone,
        lora_adapter=lora,
        priority=priority,
        now=now,
    )
    scheduler = Scheduler(SchedulerConfig(gpu_weights=gpu_weights or {"a100": 3.0, "t4": 1.0}))
    return scheduler.view(snapshot, rows, np.asarray(inflight or [0] * snapshot.size, dtype=np.int64), ctx)


class LeastInFlightPicker:
    """A deterministic picker for server tests: least in-flight among ready candidates, ties
    broken by scraped queue depth (the real scheduler adds jitter and affinity)."""

    def pick(
        self,
        snapshot: FleetSnapshot,
        candidates: IntArray,
        inflight: npt.NDArray[np.int64],
        ctx: PickContext,
        count: int,
    ) -> list[int]:
        if candidates.size == 0:
            return []
        usable = candidates[~np.isnan(snapshot.ready_since[candidates])]
        if usable.size == 0:
            return []
        load = inflight[usable] * 1000.0 + snapshot.waiting[usable] + snapshot.running[usable] * 1e-3
        order = np.argsort(load, kind="stable")[:count]
        return [int(r) for r in usable[order]]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Polls ``predicate`` until it holds; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")
