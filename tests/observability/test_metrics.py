"""The metrics exposition is pinned by a golden file; names follow Prometheus conventions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from extproc.fleet.state import Endpoint, EndpointMetrics, build_snapshot
from extproc.observability.metrics import Metrics
from extproc.observability.metrics_server import MetricsServer
from extproc.observe import Observation, Usage

GOLDEN = Path(__file__).parents[1] / "data" / "metrics_golden.txt"


def sample_metrics() -> Metrics:
    endpoints = [
        Endpoint("10.0.0.1:8000", pool="fast", models=("m",), gpu_class="a100"),
        Endpoint("10.0.0.2:8000", pool="fast", models=("m",), gpu_class="a100"),
        Endpoint("10.0.0.3:8000", pool="slow", models=("m",), gpu_class="t4"),
    ]
    scraped = {
        "10.0.0.1:8000": EndpointMetrics(waiting=3, running=10, kv_usage=0.5, scraped_at=99.5),
        "10.0.0.2:8000": EndpointMetrics(waiting=1, running=4, kv_usage=0.25, scraped_at=99.0),
    }
    snapshot = build_snapshot(endpoints, scraped, version=1, now=0.0)
    metrics = Metrics()
    metrics.watch_fleet(
        lambda: snapshot,
        clock=lambda: 100.0,
        counters={"llm_extproc_endpoint_ejections": ("Ejections.", lambda: 2.0)},
    )
    metrics.request("chat", "fast", "m", "premium", "routed")
    metrics.request("chat", "fast", "m", "premium", "routed")
    metrics.request("chat", "", "m", "", "shed")
    metrics.pick_duration.observe(4e-5)
    metrics.complexity.observe(0.73)
    metrics.fallbacks.labels("model", "no_capacity").inc()
    metrics.sheds.labels("batch").inc()
    metrics.policy_loaded("abc123", ok=True)
    metrics.policy_loaded("def456", ok=True)
    metrics.policy_loaded("", ok=False)
    metrics.observe_response(
        Observation(
            model="m",
            pool="fast",
            status=200,
            streamed=True,
            ttft_s=0.07,
            time_per_output_token_s=0.02,
            duration_s=1.3,
            usage=Usage(prompt_tokens=120, completion_tokens=64, from_usage=True),
        )
    )
    metrics.observe_response(Observation(model="m", pool="slow", status=503, duration_s=0.01))
    metrics.cache_lookups.labels("hit").inc()
    metrics.cache_lookups.labels("miss").inc()
    metrics.cache_stores.inc()
    metrics.limited.labels("tokens_per_minute", "reject").inc()
    metrics.cost.labels("acme", "gpt-4o", "openai").inc(0.25)
    metrics.cost.labels("other", "m", "fast").inc(0.001)
    metrics.spills.labels("openai", "gpt-4o").inc()
    metrics.provider_failures.labels("openai", "429").inc()
    return metrics


def test_exposition_matches_the_golden_file() -> None:
    text = sample_metrics().exposition().decode()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_names_follow_prometheus_conventions() -> None:
    families = list(text_string_to_metric_families(sample_metrics().exposition().decode()))
    names = {f.name for f in families}
    assert {"inference_pool_queue_length", "inference_pool_average_kv_cache_utilization"} <= names
    for family in families:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", family.name), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            assert not {"user", "request_id", "user_id"} & set(sample.labels), sample
            # Tenants only on spend, and only the policy's plan names there (extproc.router.account).
            assert "tenant" not in sample.labels or family.name == "llm_extproc_cost_usd", sample
    pool_queue = next(f for f in families if f.name == "inference_pool_queue_length")
    assert {s.labels["pool"]: s.value for s in pool_queue.samples} == {"fast": 4.0, "slow": 0.0}
    info = next(f for f in families if f.name == "llm_extproc_policy_info")
    assert [s.labels["version"] for s in info.samples] == ["def456"]  # one series: the active version


async def test_metrics_and_healthz_are_served_over_http() -> None:
    server = MetricsServer(sample_metrics(), lambda: {"synced": True, "policy_version": "def456"})
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
                assert reply.status == 200
                assert "llm_extproc_requests_total" in await reply.text()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as reply:
                assert reply.status == 200 and (await reply.json())["policy_version"] == "def456"
    finally:
        await server.stop()
