"""The server's one configuration object."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    session_header: str = "x-user-id"
    # This replica's zone: the scheduler keeps traffic in it while it has capacity.
    zone: str = ""
    shutdown_grace_s: float = 30.0
    # /metrics and /healthz; port 0 disables the endpoint.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    workers: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def grpc_max_message_bytes(self) -> int:
        # Room for the body at the limit plus headers and framing, so an oversized body still
        # reaches us and gets a clear 413 instead of a gRPC error.
        return self.max_body_bytes * 2 + 1024 * 1024
