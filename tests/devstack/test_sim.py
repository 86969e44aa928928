from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.devstack.sim import EndpointSpec, SimFleet, estimate_tokens, prompt_blocks, start_fleet

SCALE = 0.02  # every simulated second lasts 20 ms


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    sim = await start_fleet(
        [EndpointSpec(gpu_class="a100", max_num_seqs=2), EndpointSpec(gpu_class="t4")], time_scale=SCALE
    )
    yield sim
    await sim.stop()


async def chat(session: aiohttp.ClientSession, address: str, text: str, max_tokens: int = 4) -> dict:  # type: ignore[type-arg]
    body = {"model": "llama-3-8b", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    async with session.post(f"http://{address}/v1/chat/completions", json=body) as reply:
        assert reply.status == 200
        assert reply.headers["x-sim-endpoint"] == address
        return await reply.json()  # type: ignore[no-any-return]


async def stats(session: aiohttp.ClientSession, address: str) -> dict:  # type: ignore[type-arg]
    async with session.get(f"http://{address}/sim/stats") as reply:
        return await reply.json()  # type: ignore[no-any-return]


def test_prefix_blocks_share_leading_hashes() -> None:
    base = "x" * 640
    assert prompt_blocks(base + "tail one")[:10] == prompt_blocks(base + "another tail")[:10]
    assert prompt_blocks("y" + base)[0] != prompt_blocks(base)[0]
    assert estimate_tokens("") == 1 and estimate_tokens("abcd" * 10) == 10


async def test_usage_is_consistent_and_batch_is_capped(fleet: SimFleet) -> None:
    fast = fleet.endpoints[0]
    async with aiohttp.ClientSession() as session:
        replies = await asyncio.gather(*(chat(session, fast.address, "hello " * 20, 6) for _ in range(5)))
        assert all(r["usage"]["completion_tokens"] == 6 for r in replies)
        assert all(r["usage"]["prompt_tokens"] == estimate_tokens("hello " * 20) for r in replies)
        assert max(len(fast.engine.running) for _ in range(1)) <= 2
        records = (await stats(session, fast.address))["records"]
    assert len(records) == 5
    # max_num_seqs=2: five simultaneous requests cannot all start at once; later ones queue.
    ttfts = sorted(r["ttft_s"] for r in records)
    assert ttfts[-1] > ttfts[0] * 1.5


async def test_prefix_cache_makes_a_repeated_prompt_faster(fleet: SimFleet) -> None:
    address = fleet.endpoints[0].address
    prompt = "shared system prompt. " * 400  # ~2,200 tokens: prefill dominates TTFT
    async with aiohttp.ClientSession() as session:
        await chat(session, address, prompt, 1)
        await chat(session, address, prompt, 1)
        first, second = (await stats(session, address))["records"]
    assert second["prefix_hit_tokens"] > 0 and first["prefix_hit_tokens"] == 0
    # The modelled prompt work, not wall time: a busy machine stretches the sleeps at random.
    assert second["prefill_s"] < first["prefill_s"] * 0.5


async def test_slow_gpu_class_is_slower() -> None:
    # A coarser time scale than the other tests: event-loop overhead must stay small next to a step.
    sim = await start_fleet([EndpointSpec(gpu_class="a100"), EndpointSpec(gpu_class="t4")], time_scale=0.2)
    fast, slow = (e.address for e in sim.endpoints)
    try:
        async with aiohttp.ClientSession() as session:
            await chat(session, fast, "q " * 500, 8)
            await chat(session, slow, "q " * 500, 8)
            fast_record = (await stats(session, fast))["records"][0]
            slow_record = (await stats(session, slow))["records"][0]
    finally:
        await sim.stop()
    # The modelled prompt work by the cited per-class rates (a busy machine stretches wall time
    # at random: the fast one's 0.12 s took 0.21 s in a loaded CI run); and the wall time agrees.
    assert slow_record["prefill_s"] > fast_record["prefill_s"] * 2
    assert slow_record["e2e_s"] > fast_record["e2e_s"]


async def test_openai_client_streams_with_include_usage(fleet: SimFleet) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"http://{fleet.endpoints[0].address}/v1", api_key="x", max_retries=0
    )
    pieces, usage = [], None
    stream = await client.chat.completions.create(
        model="llama-3-8b",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    await client.close()
    assert len(pieces) == 5
    assert usage is not None and usage.completion_tokens == 5
    completion = openai.AsyncOpenAI(base_url=f"http://{fleet.endpoints[0].address}/v1", api_key="x")
    text = await completion.completions.create(model="llama-3-8b", prompt="abc", max_tokens=3)
    await completion.close()
    assert text.usage is not None and text.usage.completion_tokens == 3


async def test_metrics_use_vllm_names_and_parse_with_prometheus_client(fleet: SimFleet) -> None:
    address = fleet.endpoints[0].address
    async with aiohttp.ClientSession() as session:
        await chat(session, address, "x" * 300, 2)
        async with session.get(f"http://{address}/metrics") as reply:
            page = await reply.text()
    families = {f.name: f for f in text_string_to_metric_families(page)}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:cache_config_info",
        "vllm:lora_requests_info",
    ):
        assert name in families, name
    queries = families["vllm:prefix_cache_queries"].samples[0]
    assert queries.name == "vllm:prefix_cache_queries_total" and queries.value == estimate_tokens("x" * 300)
    assert queries.labels == {"model_name": "llama-3-8b", "engine": "0"}
    ttft_count = [
        s for s in families["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_count")
    ]
    assert ttft_count[0].value == 1


async def test_warmup_errors_hang_and_crash_controls() -> None:
    sim = await start_fleet([EndpointSpec(warmup_s=3600)], time_scale=1.0)
    address = sim.endpoints[0].address
    body = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{address}/health") as reply:
                assert reply.status == 503
            async with session.post(f"http://{address}/v1/chat/completions", json=body) as reply:
                assert reply.status == 503
            await session.post(f"http://{address}/sim/control", json={"ready": True})
            async with session.get(f"http://{address}/health") as reply:
                assert reply.status == 200
            await session.post(f"http://{address}/sim/control", json={"error_rate": 1.0})
            async with session.post(f"http://{address}/v1/chat/completions", json=body) as reply:
                assert reply.status == 500
            await session.post(f"http://{address}/sim/control", json={"error_rate": 0, "hang": True})
            with pytest.raises(asyncio.TimeoutError):
                await session.post(
                    f"http://{address}/v1/chat/completions",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=0.3),
                )
            await session.post(
                f"http://{address}/sim/control", json={"hang": False, "metrics_mode": "garbage"}
            )
            async with session.get(f"http://{address}/metrics") as reply:
                assert b"prometheus" in await reply.read()
            async with session.post(f"http://{address}/v1/models") as reply:
                assert reply.status == 405
            await session.post(f"http://{address}/sim/control", json={"crash": True})
            for _ in range(100):
                if sim.endpoints[0].runner is None:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://{address}/health")
            await sim.endpoints[0].restart()
            async with session.get(f"http://{address}/v1/models") as reply:
                assert json.loads(await reply.read())["data"][0]["id"] == "llama-3-8b"
    finally:
        await sim.stop()


async def test_crash_cuts_streams_and_keep_alive_connections_at_once() -> None:
    sim = await start_fleet([EndpointSpec()], time_scale=1.0)
    endpoint = sim.endpoints[0]
    body = {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 2000,
        "stream": True,
    }
    try:
        # One pooled connection: after the first request it sits idle, kept alive.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as idle:
            async with idle.get(f"http://{endpoint.address}/health") as reply:
                assert reply.status == 200
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"http://{endpoint.address}/v1/chat/completions", json=body) as stream,
            ):
                await stream.content.readline()  # generating
                await endpoint.crash()
                with pytest.raises(aiohttp.ClientError):  # cut, not finished 2,000 tokens later
                    await asyncio.wait_for(stream.read(), 30)
            assert endpoint.runner is None
            # The kept-alive connection is gone too: refused or reset, never served or left hanging.
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(idle.get(f"http://{endpoint.address}/health"), 30)
    finally:
        await sim.stop()


async def test_unknown_model_is_404_in_openai_format(fleet: SimFleet) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        async with session.post(
            f"http://{fleet.endpoints[0].address}/v1/chat/completions", json=body
        ) as reply:
            assert reply.status == 404
            assert "does not exist" in (await reply.json())["error"]["message"]


async def test_load_endpoint_counts_in_flight_requests_like_vllm() -> None:
    sim = await start_fleet([EndpointSpec(gpu_class="a100")], time_scale=SCALE)
    address = sim.endpoints[0].address
    try:
        async with aiohttp.ClientSession() as session:

            async def load() -> int:
                async with session.get(f"http://{address}/load") as reply:
                    return int((await reply.json())["server_load"])

            assert await load() == 0
            pending = asyncio.ensure_future(chat(session, address, "hi", 400))
            for _ in range(200):
                if await load() == 1:
                    break
                await asyncio.sleep(0.01)
            assert await load() == 1
            await pending
            assert await load() == 0
    finally:
        await sim.stop()


async def test_prefill_and_decode_speeds_differ_by_class_and_show_in_the_servers_metrics() -> None:
    """The router's own parser reads the evidence it learns from; classes differ unevenly."""
    from extproc.collectors.promparse import parse_page

    # Real time (scale 1): an event loop on a busy machine adds milliseconds per step, which at a
    # compressed scale would be a large share of a 2 ms decode step.
    sim = await start_fleet([EndpointSpec(gpu_class="a100"), EndpointSpec(gpu_class="l40s")], time_scale=1.0)
    try:
        async with aiohttp.ClientSession() as session:
            rates = []
            for endpoint in sim.endpoints:
                await chat(session, endpoint.address, "q " * 2000, 8)
                async with session.get(f"http://{endpoint.address}/metrics") as reply:
                    page = parse_page(await reply.text())
                metrics = page.to_endpoint_metrics(scraped_at=0.0)
                rates.append(
                    (
                        metrics.prefill_seconds_total / metrics.prompt_tokens_total,
                        metrics.decode_seconds_total / metrics.decode_tokens_total,
                    )
                )
        (a100_prefill, a100_decode), (l40s_prefill, l40s_decode) = rates
        assert l40s_decode > 1.5 * a100_decode  # decode: bandwidth-bound, the L40S is 2.3x slower
        assert l40s_prefill < 1.5 * a100_prefill  # prefill: compute-bound, about equal (0.87x)
    finally:
        await sim.stop()


async def test_an_endpoint_degrades_on_command_and_on_schedule() -> None:
    sim = await start_fleet(
        [
            EndpointSpec(gpu_class="a100"),
            EndpointSpec(gpu_class="a100", slowdown_after_s=0.0, slowdown_factor=4.0),
        ],
        time_scale=1.0,  # real time: event-loop lag stays small next to a 12 ms step
    )
    steady, scheduled = (e.address for e in sim.endpoints)
    try:
        async with aiohttp.ClientSession() as session:
            await chat(session, steady, "q", 20)
            await chat(session, scheduled, "q", 20)
            async with session.post(f"http://{steady}/sim/control", json={"slowdown": 4.0}) as reply:
                assert reply.status == 200
            await chat(session, steady, "q", 20)
            steady_before, steady_after = (r["e2e_s"] for r in (await stats(session, steady))["records"])
            slowed = (await stats(session, scheduled))["records"][0]["e2e_s"]
        # 4x slower; the margins absorb event-loop lag on a busy machine.
        assert steady_after > 2.0 * steady_before
        assert slowed > 2.0 * steady_before
    finally:
        await sim.stop()
