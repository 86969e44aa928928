"""The server's one configuration object."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.headers import DEFAULT_SESSION_HEADER


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9002
    # Bodies above this get a 413 with an OpenAI-style error. Envoy's own buffer limit must be larger.
    max_body_bytes: int = 4 * 1024 * 1024
    # Endpoints handed to Envoy per request: the primary plus fallbacks walked by retries.
    endpoints_per_request: int = 3
    # Models answered by /v1/models and accepted even while no endpoint serves them;
    # empty means "whatever the discovered fleet serves".
    models: tuple[str, ...] = ()
    # The header whose value is the session key for affinity (and sticky splits).
    session_header: str = DEFAULT_SESSION_HEADER
    # This replica's zone: the scheduler keeps traffic in it while it has capacity.
    zone: str = ""
    shutdown_grace_s: float = 30.0
    # /metrics and /healthz; port 0 disables the endpoint.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    workers: int = 1
    # Ask streaming model servers for a final usage chunk (stream_options.include_usage) when the
    # client did not: exact prompt/completion counts, but clients then see one extra chunk with
    # empty choices. Off by default: completion tokens are counted from the stream instead.
    inject_stream_usage: bool = False
    # x-llm-complexity on routed requests. Off on the Wasm data path, whose fast path has no
    # complexity scorer: both paths then set the same headers (docs/wasm.md).
    complexity_header: bool = True
    # The Wasm filter's brain (extproc.wasm.brain): snapshot, decide and observations over HTTP
    # on this port; 0 disables it (the ext_proc data path needs none).
    brain_port: int = 0
    # Decision log: "" off, "-" stdout, else a rotating file; sampled by request id.
    decision_log: str = ""
    decision_log_sample_rate: float = 0.01
    decision_log_include_prompt: bool = False
    # Envoy runs the observer filter (extproc/deploy/envoy/local.yaml's llm-observe): decision-log lines wait
    # for the response's tokens and latency before they are written.
    expect_observer: bool = True
    # Response cache ("memory", "redis" or "off") and tenant limits store ("memory" or "redis");
    # policies decide which routes cache and which tenants have limits.
    cache_backend: str = "memory"
    cache_max_bytes: int = 256 * 1024 * 1024
    limits_backend: str = "memory"
    redis_url: str = ""
    # Redis unreachable: admit requests (fail open) or refuse them with 429.
    limits_fail_open: bool = True
    # OTLP/gRPC endpoint for routing spans (e.g. http://otel-collector:4317); "" is off.
    otlp_endpoint: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def grpc_max_message_bytes(self) -> int:
        # Room for the body at the limit plus headers and framing, so an oversized body still
        # reaches us and gets a clear 413 instead of a gRPC error.
        return self.max_body_bytes * 2 + 1024 * 1024
