"""The cheapest possible Python ext_proc server: the floor any Python router pays per request.

python -m extproc.bench.floor_extproc PORT ENDPOINT

Request headers: continue. Request body: json.loads it, put ENDPOINT in the `envoy.lb` metadata
(so Envoy's override_host routes exactly as with llm-extproc). Response headers: continue.
No policy, no scheduler, no metrics. `python -m extproc.bench.overhead` runs it as the
`python-floor` setup, so what llm-extproc adds on top of gRPC itself is measured in one run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

_CONTINUE_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
_CONTINUE_RESPONSE = ep.ProcessingResponse(response_headers=ep.HeadersResponse())


class FloorProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def Process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ep.ProcessingResponse]:
        async for message in requests:
            phase = message.WhichOneof("request")
            if phase == "request_headers":
                yield _CONTINUE_HEADERS
            elif phase == "request_body":
                json.loads(message.request_body.body)
                reply = ep.ProcessingResponse(request_body=ep.BodyResponse())
                reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields[
                    "x-gateway-destination-endpoint"
                ].string_value = self.endpoint
                yield reply
            elif phase == "response_headers":
                yield _CONTINUE_RESPONSE


async def serve(port: int, endpoint: str) -> None:
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(FloorProcessor(endpoint), server)
    checks = health.aio.HealthServicer()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
