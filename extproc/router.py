"""The routing decision: parsed request + fleet snapshot → ordered endpoints and headers.

Pure computation on the request path: no I/O, no locks, no imports of collectors or the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from extproc.config import ServerConfig
from extproc.errors import ErrorKind, RoutingError
from extproc.fleet import FleetState, InFlight
from extproc.request import ParsedRequest, RequestHeaders
from extproc.scheduling import EndpointPicker, PickContext

DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_METADATA_NAMESPACE = "envoy.lb"
MODEL_HEADER = "x-llm-model"


@dataclass(slots=True)
class Decision:
    endpoints: list[str]
    model: str
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None  # replacement request body, when the policy rewrote it


class Router:
    def __init__(
        self,
        config: ServerConfig,
        fleet: FleetState,
        picker: EndpointPicker,
        inflight: InFlight,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.picker = picker
        self.inflight = inflight
        self.clock = clock

    def served_models(self) -> tuple[str, ...]:
        return self.config.models or self.fleet.snapshot.models

    def models_body(self) -> bytes:
        """The /v1/models answer, in OpenAI's list format."""
        data = [{"id": m, "object": "model", "owned_by": "llm-extproc"} for m in self.served_models()]
        return json.dumps({"object": "list", "data": data}).encode()

    def decide(self, headers: RequestHeaders, request: ParsedRequest) -> Decision:
        snapshot = self.fleet.snapshot
        candidates = snapshot.rows_serving(request.model)
        if candidates.size == 0:
            if request.model not in self.served_models():
                raise RoutingError(
                    ErrorKind.MODEL_NOT_FOUND,
                    f"model {request.model!r} does not exist; available: {', '.join(self.served_models())}",
                    "model_not_found",
                )
            raise RoutingError(
                ErrorKind.NO_CAPACITY, f"no endpoint serves model {request.model!r} right now", "no_endpoint"
            )
        ctx = PickContext(
            model=request.model,
            prompt_text=request.text,
            session_key=headers.headers.get(self.config.session_header) or request.user,
            now=self.clock(),
        )
        rows = self.picker.pick(
            snapshot,
            candidates,
            self.inflight.counts_for(snapshot),
            ctx,
            self.config.endpoints_per_request,
        )
        if not rows:
            raise RoutingError(
                ErrorKind.NO_CAPACITY,
                f"no healthy endpoint for model {request.model!r}; retry later",
                "no_healthy_endpoint",
                retry_after_s=1.0,
            )
        endpoints = [snapshot.endpoints[r].address for r in rows]
        self.inflight.add(snapshot, endpoints[0], +1)
        return Decision(
            endpoints=endpoints,
            model=request.model,
            set_headers=[(DESTINATION_HEADER, ",".join(endpoints)), (MODEL_HEADER, request.model)],
        )

    def finished(self, endpoint: str) -> None:
        self.inflight.add(self.fleet.snapshot, endpoint, -1)
