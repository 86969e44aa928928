"""Builders for Envoy ext_proc messages, shared by the server tests."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.config import ServerConfig
from extproc.fleet import Endpoint, EndpointMetrics, FleetState, InFlight, build_snapshot
from extproc.router import Router
from extproc.scheduling import LeastInFlightPicker
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
