"""OpenTelemetry spans for routing decisions, joined to Envoy's trace through ``traceparent``.

Off by default and free when off: nothing here is imported on the request path unless a
tracer is configured. A span is recorded once the request has finished (its start and end
times are given explicitly), so no span object lives across the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DecisionTracer:
    """Wraps an OpenTelemetry tracer; ``exporter`` is any SpanExporter (OTLP, in-memory)."""

    def __init__(self, exporter: Any, service_name: str = "llm-extproc", batch: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("llm-extproc")
        self._propagator = TraceContextTextMapPropagator()

    @staticmethod
    def sampled(traceparent: str) -> bool:
        """W3C trace flags: only requests the caller's trace samples get a span."""
        parts = traceparent.split("-")
        return len(parts) == 4 and len(parts[3]) == 2 and int(parts[3], 16) & 1 == 1

    def record(
        self, traceparent: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any], error: bool
    ) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        parent = self._propagator.extract({"traceparent": traceparent})
        span = self._tracer.start_span(
            "llm.route", context=parent, kind=SpanKind.INTERNAL, start_time=start_ns
        )
        for key, value in attributes.items():
            if value is not None and value != "":
                span.set_attribute(key, value)
        if error:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self._provider.shutdown()


def otlp_tracer(endpoint: str) -> DecisionTracer:
    """An OTLP/gRPC exporter to ``endpoint`` (e.g. http://otel-collector:4317)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return DecisionTracer(OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")))
