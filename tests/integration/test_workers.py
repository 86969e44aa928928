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
        # Envoy opens a fresh ext_proc connection every 100 streams and the kernel hashes each
        # to a worker: a few connections can all land on one, so send (in whole connections)
        # until both workers have routed, at most 20 connections (all on one: p ~ 2e-6).
        sent = 0
        per_worker = [0.0, 0.0]
        while sent < 2000 and not all(per_worker):
            for _ in range(100):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{local.listen_port}/v1/chat/completions",
                    data=body,
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as reply:
                    assert reply.status == 200
                    # Decided by a worker (the simulator echoes the endpoint list it chose).
                    destinations.add(reply.headers["x-sim-destination"].split(",")[0])
            sent += 100
            per_worker = [
                counted(local.config.metrics_port + i, "llm_extproc_requests_total", 'outcome="routed"')
                for i in range(2)
            ]
        assert sum(per_worker) == sent
        assert all(count > 0 for count in per_worker), (per_worker, sent)
        assert destinations <= {e["address"] for e in local.fleet} and len(destinations) > 1
    finally:
        local.stop()
