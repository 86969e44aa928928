"""The simulator's other APIs, driven by the official SDKs where there is one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest

from extproc.devstack.sim import EndpointSpec, SimFleet, start_fleet
from extproc.devstack.sim_apis import AUDIO_BYTES_PER_SECOND

SCALE = 0.02


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    sim = await start_fleet(
        [EndpointSpec(models=("llama-3-8b", "whisper")), EndpointSpec(models=("llama-3-8b",))],
        time_scale=SCALE,
    )
    yield sim
    await sim.stop()


def openai_client(address: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0)


async def test_responses_plain_streamed_and_stored_for_follow_ups(fleet: SimFleet) -> None:
    first, other = (e.address for e in fleet.endpoints)
    async with openai_client(first) as client:
        response = await client.responses.create(
            model="llama-3-8b", input="hello", instructions="be brief", max_output_tokens=5
        )
        assert response.id.startswith("resp_") and response.output_text.startswith("tok0 tok1")
        assert response.usage is not None and response.usage.output_tokens == 5
        kinds = []
        text = []
        async for event in await client.responses.create(
            model="llama-3-8b",
            input=[{"role": "user", "content": "again"}],
            max_output_tokens=4,
            stream=True,
            previous_response_id=response.id,
        ):
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            if event.type == "response.completed":
                assert event.response.usage is not None and event.response.usage.output_tokens == 4
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert len(text) == 4
    # Another replica never stored it: vLLM answers 404, which is why the router pins follow-ups.
    async with openai_client(other) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="llama-3-8b", input="x", previous_response_id=response.id)


async def test_anthropic_messages_plain_and_streamed(fleet: SimFleet) -> None:
    address = fleet.endpoints[0].address
    async with anthropic.AsyncAnthropic(base_url=f"http://{address}", api_key="k", max_retries=0) as client:
        message = await client.messages.create(
            model="llama-3-8b",
            max_tokens=6,
            system="terse",
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        )
        assert message.type == "message" and message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 6 and message.usage.input_tokens > 0
        async with client.messages.stream(
            model="llama-3-8b", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            chunks = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert len(chunks) == 3 and final.usage.output_tokens == 3
        counted = await client.messages.count_tokens(
            model="llama-3-8b", system="abcd", messages=[{"role": "user", "content": "efgh"}]
        )
        assert counted.input_tokens == 3  # "abcd\nefgh": 9 characters, ~4 per token
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(
                model="nope", max_tokens=1, messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.body["type"] == "error"  # type: ignore[index]


async def test_rerank_score_tokenize_detokenize(fleet: SimFleet) -> None:
    base = f"http://{fleet.endpoints[0].address}"
    async with aiohttp.ClientSession() as session:
        rerank = {
            "model": "llama-3-8b",
            "query": "red apple",
            "documents": ["blue sky", "a red apple"],
            "top_n": 1,
        }
        async with session.post(f"{base}/v1/rerank", json=rerank) as reply:
            body = await reply.json()
        assert [r["index"] for r in body["results"]] == [1] and body["usage"]["total_tokens"] > 0
        score = {"model": "llama-3-8b", "text_1": "red apple", "text_2": ["red apple", "sky"]}
        async with session.post(f"{base}/v1/score", json=score) as reply:
            scores = [d["score"] for d in (await reply.json())["data"]]
        assert scores[0] > scores[1]
        async with session.post(
            f"{base}/tokenize", json={"model": "llama-3-8b", "prompt": "abcdefgh"}
        ) as reply:
            tokens = await reply.json()
        assert tokens["count"] == 2 == len(tokens["tokens"])
        async with session.post(
            f"{base}/detokenize", json={"model": "llama-3-8b", "tokens": [1, 2]}
        ) as reply:
            assert (await reply.json())["prompt"] == "tok1 tok2"


async def test_transcription_multipart_plain_and_streamed(fleet: SimFleet) -> None:
    audio = b"\x00" * (3 * AUDIO_BYTES_PER_SECOND)
    async with openai_client(fleet.endpoints[0].address) as client:
        plain = await client.audio.transcriptions.create(model="whisper", file=("a.wav", audio, "audio/wav"))
        assert plain.text.startswith("tok0")
        with pytest.raises(openai.NotFoundError):
            await client.audio.transcriptions.create(model="nope", file=("a.wav", audio, "audio/wav"))
    form = aiohttp.FormData()
    form.add_field("model", "whisper")
    form.add_field("stream", "true")
    form.add_field("stream_include_usage", "true")
    form.add_field("file", audio, filename="a.wav", content_type="audio/wav")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{fleet.endpoints[0].address}/v1/audio/transcriptions", data=form) as reply,
    ):
        assert reply.headers["content-type"].startswith("text/event-stream")
        raw = await reply.read()
    events = [line for line in raw.split(b"\n\n") if line]
    assert events[-1] == b"data: [DONE]" and b'"usage"' in events[-2] and b"transcription.chunk" in events[0]


async def test_output_budgets_beyond_the_context_are_refused_like_vllm(fleet: SimFleet) -> None:
    base = f"http://{fleet.endpoints[0].address}"
    async with aiohttp.ClientSession() as session:
        for path, body in [
            (
                "/v1/responses",
                {"model": "llama-3-8b", "input": ["a", {"content": "b"}], "max_output_tokens": 10**9},
            ),
            (
                "/v1/messages",
                {"model": "llama-3-8b", "max_tokens": 10**9, "messages": [{"role": "user", "content": "x"}]},
            ),
            ("/v1/messages", {"model": "llama-3-8b", "messages": [{"role": "user", "content": "x"}]}),
        ]:
            async with session.post(base + path, json=body) as reply:
                assert reply.status == 400, path
                assert "max_" in json.dumps(await reply.json())
