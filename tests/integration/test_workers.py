"""`serve --workers 2` behind a real Envoy: one scraped fleet, both workers route, nothing fails."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.conftest import counted, started_stack

pytestmark = pytest.mark.envoy


def test_two_workers_share_the_port_and_the_fleet_view() -> None:
    local = started_stack(extproc_args=["--workers", "2"])
    try:
        body = json.dumps(
            {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        ).encode()
        destinations = set()
        for _ in range(400):
            request = urllib.request.Request(
                f"http://127.0.0.1:{local.listen_port}/v1/chat/completions",
                data=body,
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                assert reply.status == 200
                # Decided by a worker (the simulator echoes the endpoint list it chose).
                destinations.add(reply.headers["x-sim-destination"].split(",")[0])
        per_worker = [
            counted(local.config.metrics_port, "llm_extproc_requests_total", 'outcome="routed"'),
            counted(local.config.metrics_port + 1, "llm_extproc_requests_total", 'outcome="routed"'),
        ]
        # Envoy rotates its ext_proc connection every 100 streams, the kernel spreads them.
        assert sum(per_worker) == 400
        assert all(count > 0 for count in per_worker), per_worker
        assert destinations <= {e["address"] for e in local.fleet} and len(destinations) > 1
    finally:
        local.stop()
