"""The simulator's other vLLM APIs: Responses, Anthropic Messages, rerank/score,
tokenize/detokenize and audio transcription/translation, streaming included.

Shapes follow vLLM's OpenAI-compatible server (vllm/entrypoints/openai: serving_responses,
serving_transcription, score/rerank, tokenize) and its Anthropic endpoint
(vllm/entrypoints/anthropic/serving.py) on vLLM's main branch as of November 2026;
docs/apis.md lists the fields.
Generation goes through the endpoint's engine, so these requests load it (and are slowed by
it) exactly like chat completions. Registered by extproc.devstack.sim; never imported by the
request path.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

# Audio the simulator assumes: 16 kHz, 16-bit mono PCM (Whisper's input rate).
AUDIO_BYTES_PER_SECOND = 32_000
# Whisper's encoder: ~50 audio frames per second, charged as prompt tokens.
AUDIO_TOKENS_PER_SECOND = 50
STORED_RESPONSES = 10_000  # per endpoint; vLLM keeps them in memory too
MAX_MODEL_LEN = 8192


class Generation(Protocol):
    """One request in an endpoint's engine: token numbers arrive on ``tokens``, then None."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def generated(self) -> int: ...
    @property
    def tokens(self) -> asyncio.Queue[int | None]: ...


class Spec(Protocol):
    @property
    def models(self) -> tuple[str, ...]: ...
    @property
    def lora_adapters(self) -> tuple[str, ...]: ...
    @property
    def default_max_tokens(self) -> int: ...


class SimServer(Protocol):
    """What these handlers need from extproc.devstack.sim.SimEndpoint."""

    @property
    def spec(self) -> Spec: ...
    @property
    def in_flight(self) -> set[asyncio.Task[Any]]: ...
    def generate(self, rid: str, model: str, text: str, max_tokens: int) -> Generation: ...
    async def _gate(self, request: web.Request) -> web.StreamResponse | None: ...
    def _headers(self, request: web.Request, rid: str) -> dict[str, str]: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _anthropic_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part if isinstance(part, str) else str(part.get("text", part.get("output", "")))
            for part in content
            if isinstance(part, str | dict)
        )
    return ""


def _items_text(items: object) -> str:
    """A Responses ``input``: a string, or items (messages with content, tool outputs, strings)."""
    if not isinstance(items, list):
        return _text_of(items)
    return "\n".join(
        _text_of(item.get("content", item.get("output"))) if isinstance(item, dict) else _text_of(item)
        for item in items
    )


def _budget(value: object, default: int) -> int | None:
    """An output-token budget, or None when vLLM would refuse it (over the context length)."""
    if value is None or value == 0:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_MODEL_LEN:
        return None
    return value


def _token_ids(text: str) -> list[int]:
    """Deterministic fake token ids, ~4 characters each (the simulator's token estimate)."""
    return [zlib.crc32(text[i : i + 4].encode()) % 32_000 for i in range(0, max(len(text), 1), 4)]


class SimApis:
    """The handlers of one endpoint, with its stored Responses (for ``previous_response_id``)."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.responses: OrderedDict[str, str] = OrderedDict()  # id -> output text

    def routes(self) -> list[tuple[str, Handler]]:
        return [
            ("/v1/responses", self.responses_create),
            ("/v1/messages", self.messages_create),
            ("/v1/messages/count_tokens", self.count_tokens),
            ("/v1/rerank", self.rerank),
            ("/v2/rerank", self.rerank),
            ("/rerank", self.rerank),
            ("/v1/score", self.score),
            ("/score", self.score),
            ("/tokenize", self.tokenize),
            ("/detokenize", self.detokenize),
            ("/v1/audio/transcriptions", self.transcribe),
            ("/v1/audio/translations", self.transcribe),
        ]

    def _serves(self, model: object) -> bool:
        spec = self.server.spec
        return isinstance(model, str) and (model in spec.models or model in spec.lora_adapters)

    async def _tracked(self, handler: Handler, request: web.Request) -> web.StreamResponse:
        """Crash and restart cancel what is in flight, as for chat completions."""
        task = asyncio.current_task()
        assert task is not None
        self.server.in_flight.add(task)
        try:
            gated = await self.server._gate(request)
            if gated is not None:
                return gated
            return await handler(request)
        finally:
            self.server.in_flight.discard(task)

    async def _json(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def _tokens(self, job: Generation) -> AsyncIterator[int]:
        while (token := await job.tokens.get()) is not None:
            yield token

    # -- OpenAI Responses API ------------------------------------------------------------------

    async def responses_create(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._responses, request)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if body is None:
            return _openai_error(400, "invalid JSON body")
        model = body.get("model")
        if not self._serves(model):
            return _openai_error(404, f"The model `{model}` does not exist.", "NotFoundError")
        previous = body.get("previous_response_id")
        history = ""
        if previous is not None:
            if not isinstance(previous, str) or previous not in self.responses:
                # vLLM keeps responses in its own memory: another replica has never heard of it.
                return _openai_error(404, f"Response with id '{previous}' not found.")
            history = self.responses[previous]
        text = "\n".join([str(body.get("instructions") or ""), history, _items_text(body.get("input", ""))])
        max_tokens = _budget(body.get("max_output_tokens"), self.server.spec.default_max_tokens)
        if max_tokens is None:
            return _openai_error(400, f"max_output_tokens must be between 1 and {MAX_MODEL_LEN}")
        rid = f"resp_{uuid.uuid4().hex[:24]}"
        job = self.server.generate(rid, str(model), text, max_tokens)
        headers = self.server._headers(request, rid)
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        response: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "status": "in_progress",
            "output": [],
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": previous,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "store": body.get("store", True),
            "background": False,
            "error": None,
            "incomplete_details": None,
            "metadata": body.get("metadata"),
            "usage": None,
        }

        def finished(text_out: str) -> dict[str, Any]:
            if response["store"]:
                self.responses[rid] = text + "\n" + text_out
                while len(self.responses) > STORED_RESPONSES:
                    self.responses.popitem(last=False)
            part = {"type": "output_text", "text": text_out, "annotations": [], "logprobs": []}
            item = {
                "type": "message",
                "id": message_id,
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
            return {
                **response,
                "status": "incomplete" if job.generated >= max_tokens else "completed",
                "incomplete_details": {"reason": "max_output_tokens"}
                if job.generated >= max_tokens
                else None,
                "output": [item],
                "usage": {
                    "input_tokens": job.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": job.generated,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": job.prompt_tokens + job.generated,
                },
            }

        if not body.get("stream"):
            words = [f"tok{token - 1}" async for token in self._tokens(job)]
            return web.json_response(finished(" ".join(words)), headers=headers)
        stream = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await stream.prepare(request)
        sequence = 0

        async def emit(kind: str, **payload: Any) -> None:
            nonlocal sequence
            await stream.write(_sse({"type": kind, "sequence_number": sequence, **payload}, kind))
            sequence += 1

        item = {
            "type": "message",
            "id": message_id,
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        at = {"item_id": message_id, "output_index": 0, "content_index": 0}
        await emit("response.created", response=response)
        await emit("response.in_progress", response=response)
        await emit("response.output_item.added", output_index=0, item=item)
        await emit(
            "response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": []}
        )
        words = []
        async for token in self._tokens(job):
            words.append(f"tok{token - 1}")
            await emit("response.output_text.delta", **at, delta=f"tok{token - 1} ", logprobs=[])
        done = finished(" ".join(words))
        part = done["output"][0]["content"][0]
        await emit("response.output_text.done", **at, text=part["text"], logprobs=[])
        await emit("response.content_part.done", **at, part=part)
        await emit("response.output_item.done", output_index=0, item=done["output"][0])
        await emit("response.completed", response=done)
        await stream.write_eof()
        return stream

    # -- Anthropic Messages API ----------------------------------------------------------------

    async def messages_create(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._messages, request)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if body is None:
            return _anthropic_error(400, "invalid JSON body")
        model = body.get("model")
        if not self._serves(model):
            return _anthropic_error(404, f"model: {model}", "not_found_error")
        max_tokens = _budget(body.get("max_tokens"), 0)
        if not max_tokens:
            return _anthropic_error(400, f"max_tokens: must be between 1 and {MAX_MODEL_LEN}")
        text = self._messages_text(body)
        rid = f"msg_{uuid.uuid4().hex[:24]}"
        job = self.server.generate(rid, str(model), text, max_tokens)
        headers = {
            **self.server._headers(request, rid),
            # Echoed for tests: Anthropic's headers reach the upstream like Authorization does.
            "x-sim-anthropic-version": request.headers.get("anthropic-version", ""),
            "x-sim-api-key-seen": "yes" if request.headers.get("x-api-key") else "no",
        }
        message: dict[str, Any] = {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": job.prompt_tokens, "output_tokens": 0},
        }
        if not body.get("stream"):
            words = [f"tok{token - 1}" async for token in self._tokens(job)]
            message["content"] = [{"type": "text", "text": " ".join(words)}]
            message["stop_reason"] = "max_tokens"
            message["usage"]["output_tokens"] = job.generated
            return web.json_response(message, headers=headers)
        stream = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(_sse({"type": "message_start", "message": message}, "message_start"))
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        await stream.write(_sse(block, "content_block_start"))
        async for token in self._tokens(job):
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f"tok{token - 1} "},
            }
            await stream.write(_sse(delta, "content_block_delta"))
        await stream.write(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        usage = {"input_tokens": job.prompt_tokens, "output_tokens": job.generated}
        final = {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": usage,
        }
        await stream.write(_sse(final, "message_delta"))
        await stream.write(_sse({"type": "message_stop"}, "message_stop"))
        await stream.write_eof()
        return stream

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._count_tokens, request)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        """Tokenizer work only, as in vLLM: ``{"input_tokens": N}``."""
        body = await self._json(request)
        if body is None:
            return _anthropic_error(400, "invalid JSON body")
        model = body.get("model")
        if not self._serves(model):
            return _anthropic_error(404, f"model: {model}", "not_found_error")
        text = self._messages_text(body)
        reply = {"input_tokens": len(_token_ids(text)) if text else 0}
        return web.json_response(reply, headers=self.server._headers(request, uuid.uuid4().hex))

    @staticmethod
    def _messages_text(body: dict[str, Any]) -> str:
        messages = body.get("messages")
        return "\n".join(
            [
                _text_of(body.get("system")),
                *(
                    _text_of(m.get("content"))
                    for m in (messages if isinstance(messages, list) else [])
                    if isinstance(m, dict)
                ),
            ]
        )

    # -- pooling: rerank and score (one prefill, no decode) --------------------------------------

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._rerank, request)

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if (
            body is None
            or not isinstance(body.get("query"), str)
            or not isinstance(body.get("documents"), list)
        ):
            return _openai_error(400, "'query' (string) and 'documents' (array) are required")
        if not self._serves(body.get("model")):
            return _openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        query = body["query"]
        documents = [d if isinstance(d, str) else _text_of([d]) for d in body["documents"]]
        rid = f"rerank-{uuid.uuid4().hex[:24]}"
        job = self.server.generate(rid, body["model"], "\n".join([query, *documents]), 1)
        async for _ in self._tokens(job):
            pass
        scores = [self._relevance(query, doc) for doc in documents]
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        top_n = body.get("top_n")
        if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n <= 0:
            top_n = len(documents)
        results = [
            {"index": i, "document": {"text": documents[i]}, "relevance_score": scores[i]}
            for i in order[:top_n]
        ]
        reply = {
            "id": rid,
            "model": body["model"],
            "usage": {"total_tokens": job.prompt_tokens},
            "results": results,
        }
        return web.json_response(reply, headers=self.server._headers(request, rid))

    @staticmethod
    def _relevance(query: str, document: str) -> float:
        """Shared words over all words: enough to order documents plausibly."""
        q, d = set(query.lower().split()), set(document.lower().split())
        return round(len(q & d) / max(1, len(q | d)), 6)

    async def score(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._score, request)

    async def _score(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if body is None or "text_1" not in body or "text_2" not in body:
            return _openai_error(400, "'text_1' and 'text_2' are required")
        if not self._serves(body.get("model")):
            return _openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        first = body["text_1"] if isinstance(body["text_1"], list) else [body["text_1"]]
        second = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
        pairs = (
            list(zip(first * len(second), second, strict=False))
            if len(first) == 1
            else list(zip(first, second, strict=False))
        )
        rid = f"score-{uuid.uuid4().hex[:24]}"
        job = self.server.generate(rid, body["model"], "\n".join(f"{a}\n{b}" for a, b in pairs), 1)
        async for _ in self._tokens(job):
            pass
        data = [
            {"index": i, "object": "score", "score": self._relevance(str(a), str(b))}
            for i, (a, b) in enumerate(pairs)
        ]
        reply = {
            "id": rid,
            "object": "list",
            "created": int(time.time()),
            "model": body["model"],
            "data": data,
            "usage": {
                "prompt_tokens": job.prompt_tokens,
                "total_tokens": job.prompt_tokens,
                "completion_tokens": 0,
            },
        }
        return web.json_response(reply, headers=self.server._headers(request, rid))

    # -- tokenizer endpoints (no engine work in vLLM either) -------------------------------------

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._tokenize, request)

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if body is None:
            return _openai_error(400, "invalid JSON body")
        if not self._serves(body.get("model")):
            return _openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        messages = body.get("messages")
        if isinstance(messages, list):
            text = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        else:
            text = body.get("prompt", "") if isinstance(body.get("prompt"), str) else ""
        tokens = _token_ids(text)
        reply = {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens, "token_strs": None}
        return web.json_response(reply, headers=self.server._headers(request, uuid.uuid4().hex))

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._detokenize, request)

    async def _detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if body is None or not isinstance(body.get("tokens"), list):
            return _openai_error(400, "'tokens' is required")
        if not self._serves(body.get("model")):
            return _openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = " ".join(f"tok{t}" for t in body["tokens"])
        return web.json_response({"prompt": prompt}, headers=self.server._headers(request, uuid.uuid4().hex))

    # -- audio: multipart upload in, text (or SSE chunks) out ----------------------------------

    async def transcribe(self, request: web.Request) -> web.StreamResponse:
        return await self._tracked(self._transcribe, request)

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            return _openai_error(400, "expected multipart/form-data")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _openai_error(400, "'file' is required")
        model = form.get("model")
        if not isinstance(model, str) or not self._serves(model):
            return _openai_error(404, f"The model `{model!r}` does not exist.", "NotFoundError")
        audio = upload.file.read()
        seconds = max(1, len(audio) // AUDIO_BYTES_PER_SECOND)
        rid = f"trsc-{uuid.uuid4().hex[:24]}"
        # The audio encoder's frames stand in for prompt tokens: ~4 characters per token.
        job = self.server.generate(
            rid,
            str(model),
            "a" * (4 * AUDIO_TOKENS_PER_SECOND * seconds),
            self.server.spec.default_max_tokens,
        )
        headers = {**self.server._headers(request, rid), "x-sim-audio-bytes": str(len(audio))}
        if str(form.get("stream", "false")).lower() != "true":
            words = [f"tok{token - 1}" async for token in self._tokens(job)]
            reply = {"text": " ".join(words), "usage": {"type": "duration", "seconds": seconds}}
            return web.json_response(reply, headers=headers)
        created = int(time.time())
        stream = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await stream.prepare(request)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {"id": rid, "object": "transcription.chunk", "created": created, "model": model}
            return _sse({**payload, "choices": choices, **extra})

        async for token in self._tokens(job):
            choice = {"delta": {"content": f"tok{token - 1} "}, "finish_reason": None, "stop_reason": None}
            await stream.write(chunk([choice]))
        await stream.write(chunk([{"delta": {}, "finish_reason": "length", "stop_reason": None}]))
        if str(form.get("stream_include_usage", "false")).lower() == "true":
            usage = {
                "prompt_tokens": job.prompt_tokens,
                "completion_tokens": job.generated,
                "total_tokens": job.prompt_tokens + job.generated,
            }
            await stream.write(chunk([], usage=usage))
        await stream.write(b"data: [DONE]\n\n")
        await stream.write_eof()
        return stream


def add_api_routes(app: web.Application, server: SimServer) -> None:
    apis = SimApis(server)
    for path, handler in apis.routes():
        app.router.add_post(path, handler)
