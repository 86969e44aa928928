"""The scheduler through a real Envoy + simulator: warm-up gating and prefix affinity."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from extproc.devstack.stack import LocalStack
from tests.conftest import stack_config
from tests.integration.test_envoy import chat_body, post, sim_control

pytestmark = pytest.mark.envoy


def test_warming_endpoint_gets_no_traffic_until_ready(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "endpoints:\n"
        "- {gpu_class: a100, pool: fast}\n"
        "- {gpu_class: a100, pool: fast}\n"
        "- {gpu_class: a100, pool: fast, warmup_s: 100000}\n"
    )
    local = LocalStack(stack_config(sim_fleet_file=str(fleet)))
    local.start()
    try:
        warming = local.fleet[2]["address"]
        for _ in range(20):
            status, headers, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1))
            assert status == 200
            assert warming not in headers["x-sim-destination"].split(",")
        sim_control(warming, {"ready": True})
        listed = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not listed:
            status, headers, _ = post(local, "/v1/chat/completions", chat_body(max_tokens=1))
            assert status == 200
            listed = warming in headers["x-sim-destination"].split(",")
            time.sleep(0.05)
        assert listed, "the endpoint never got traffic after becoming ready"
    finally:
        local.stop()


def test_repeated_prefixes_land_on_the_same_endpoint_and_hit_its_cache() -> None:
    local = LocalStack(stack_config())
    local.start()
    try:
        homes = []
        for tenant in ("ACME", "Globex"):
            system = (
                f"You are the support assistant for {tenant}. Policies: " + "be precise, cite sources. " * 40
            )
            served: list[str] = []
            for i in range(8):
                status, headers, _ = post(
                    local, "/v1/chat/completions", chat_body(f"{system} question {i}", max_tokens=1)
                )
                assert status == 200
                served.append(headers["x-gateway-destination-endpoint-served"])
            # Ownership is weighed against predicted wait, and the learned speeds move with the
            # measured latencies (on a busy CI machine, with their noise): a prefix may move,
            # but most of its requests stay home. (tests/scheduler covers the scorer exactly.)
            home, count = Counter(served).most_common(1)[0]
            assert count >= 5, served
            homes.append(home)
        # The simulator saw the prefix cache hit on most requests after each tenant's first.
        hits = 0
        for address in set(homes):
            with urllib.request.urlopen(f"http://{address}/sim/stats", timeout=5) as reply:
                records = json.loads(reply.read())["records"]
            hits += sum(1 for r in records if r["prefix_hit_tokens"] > 0)
        assert hits >= 8
    finally:
        local.stop()
