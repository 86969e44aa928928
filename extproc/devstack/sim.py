"""A simulated vLLM fleet: N OpenAI-compatible model servers on loopback ports, one process.

Each endpoint runs a small continuous-batching engine (waiting queue, ``max_num_seqs``, KV-cache
capacity in tokens, prefill per uncached token, a prefix cache over prompt blocks, decode steps
that slow down as the batch grows, a GPU-class speed factor) so that where a request goes
changes how fast it is answered. It speaks vLLM's HTTP API (SSE streaming included) and exposes
vLLM's metric names on ``/metrics``. See docs/simulator.md for the parameters and their sources.

Never imported by the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import json
import math
import random
import signal
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.devstack.sim_apis import add_api_routes
from extproc.observability.listen import listen


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Llama-3-8B-class serving on one GPU: prefill per uncached prompt token (compute-bound)
    and inter-token latency at batch ~1 (memory-bandwidth-bound), set independently.

    Derived in docs/simulator.md from Vidur's measured A100/H100 profiles and the vendors'
    FLOPs and bandwidth figures: prefill follows the FLOPs ratio, decode the bandwidth ratio,
    so an L40S prefills like an A100 but decodes 2.3x slower.
    """

    prefill_s_per_token: float
    inter_token_latency_s: float


GPU_PROFILES: dict[str, GpuProfile] = {
    "h100": GpuProfile(24e-6, 0.0078),
    "a100": GpuProfile(76e-6, 0.0122),
    "l40s": GpuProfile(66e-6, 0.0276),
    "l4": GpuProfile(236e-6, 0.077),
    "t4": GpuProfile(440e-6, 0.026),  # INT4/AWQ weights: 8B in BF16 does not fit 16 GB
}
CHARS_PER_TOKEN = 4
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


@dataclass
class EndpointSpec:
    """One simulated model server. Times are simulated seconds, before ``time_scale``."""

    port: int = 0
    models: tuple[str, ...] = ("llama-3-8b",)
    pool: str = "default"
    gpu_class: str = "a100"
    zone: str = ""
    max_num_seqs: int = 64
    # vLLM's per-step token budget: prompts beyond it wait for the next step (in the queue).
    max_num_batched_tokens: int = 8192
    kv_capacity_tokens: int = 60_000
    # llm-d-inference-sim's per-token latency model (docs/simulator.md): prefill = overhead +
    # uncached tokens x per-token time; each decode step takes the inter-token latency,
    # stretched up to time_factor_under_load when the batch is full. Per-token times default
    # to the GPU class's profile (GPU_PROFILES); 0 means "the class's".
    prefill_overhead_s: float = 0.010
    prefill_s_per_token: float = 0.0
    inter_token_latency_s: float = 0.0
    time_factor_under_load: float = 1.8
    # Prefix-cache block in tokens (vLLM's default 16); hashed as the server does, not as
    # any router does.
    block_size_tokens: int = 16
    # Degradation (thermal throttling, a noisy neighbour): every duration is multiplied by
    # slowdown_factor once slowdown_after_s wall-clock seconds have passed since start.
    slowdown_after_s: float = math.inf
    slowdown_factor: float = 2.0
    default_max_tokens: int = 32
    warmup_s: float = 0.0
    error_rate: float = 0.0
    lora_adapters: tuple[str, ...] = ()

    @property
    def profile(self) -> GpuProfile:
        base = GPU_PROFILES.get(self.gpu_class, GPU_PROFILES["a100"])
        return GpuProfile(
            self.prefill_s_per_token or base.prefill_s_per_token,
            self.inter_token_latency_s or base.inter_token_latency_s,
        )


@dataclass
class _Request:
    rid: str
    model: str
    prompt_tokens: int
    max_tokens: int
    blocks: list[bytes]
    arrived: float
    tokens: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    generated: int = 0
    cached_tokens: int = 0
    first_token_at: float = 0.0
    admitted_at: float = 0.0
    # The modelled time of this request's own prompt work (simulated seconds, before slowness).
    prefill_s: float = 0.0


def estimate_tokens(text: str) -> int:
    """Prompt tokens the simulator charges: ~4 characters per token, at least 1."""
    return max(1, (len(text) + 3) // 4)


def prompt_blocks(text: str, block_size_tokens: int = 16) -> list[bytes]:
    """Chained hashes of the prompt's full blocks, as vLLM hashes (parent hash, block tokens):
    equal prefixes give equal leading hashes. Blake2b over ``block_size_tokens`` simulated
    tokens, unlike any router's own hashing."""
    width = block_size_tokens * CHARS_PER_TOKEN
    blocks: list[bytes] = []
    parent = b""
    data = text.encode()
    for start in range(0, len(data) - width + 1, width):
        parent = hashlib.blake2b(parent + data[start : start + width], digest_size=16).digest()
        blocks.append(parent)
    return blocks


class Engine:
    """Continuous batching for one endpoint, stepping in simulated time scaled by ``time_scale``."""

    def __init__(self, spec: EndpointSpec, time_scale: float, metrics: SimMetrics) -> None:
        self.spec = spec
        self.time_scale = time_scale
        self.metrics = metrics
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.kv_used = 0
        self.prefix: OrderedDict[bytes, None] = OrderedDict()
        self.prefix_capacity = max(1, spec.kv_capacity_tokens // spec.block_size_tokens)
        self.profile = spec.profile
        self.started = time.monotonic()
        self.slowdown = 1.0  # set by /sim/control
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.records: deque[dict[str, Any]] = deque(maxlen=1000)
        self.served = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for request in [*self.waiting, *self.running]:
            request.tokens.put_nowait(None)
        self.waiting.clear()
        self.running.clear()
        self.kv_used = 0

    def submit(self, request: _Request) -> None:
        self.waiting.append(request)
        self.metrics.waiting.set(len(self.waiting))
        self._wake.set()

    def _admit(self) -> float:
        """Move waiting requests into the batch while seats and KV allow; return prefill time."""
        prefill = 0.0
        spec = self.spec
        budget = spec.max_num_batched_tokens
        admitted = 0
        while self.waiting and len(self.running) < spec.max_num_seqs:
            request = self.waiting[0]
            need = request.prompt_tokens + request.max_tokens
            if self.kv_used + need > spec.kv_capacity_tokens and self.running:
                break
            if admitted and request.prompt_tokens > budget:
                break  # this step's token budget is spent (one prompt always fits: no chunking)
            self.waiting.popleft()
            hits = 0
            for block in request.blocks:
                if block not in self.prefix:
                    break
                self.prefix.move_to_end(block)
                hits += 1
            for block in request.blocks[hits:]:
                self.prefix[block] = None
            while len(self.prefix) > self.prefix_capacity:
                self.prefix.popitem(last=False)
            request.cached_tokens = min(request.prompt_tokens - 1, hits * spec.block_size_tokens)
            request.admitted_at = time.monotonic()
            self.metrics.prefix_queries.inc(request.prompt_tokens)
            self.metrics.prefix_hits.inc(request.cached_tokens)
            self.metrics.queue_time.observe((request.admitted_at - request.arrived) / self.time_scale)
            request.prefill_s = (
                spec.prefill_overhead_s
                + (request.prompt_tokens - request.cached_tokens) * self.profile.prefill_s_per_token
            )
            prefill += request.prefill_s
            budget -= request.prompt_tokens - request.cached_tokens
            admitted += 1
            self.kv_used += need
            self.running.append(request)
        return prefill

    def slowness(self) -> float:
        if self.slowdown != 1.0:
            return self.slowdown
        elapsed = (time.monotonic() - self.started) / self.time_scale
        return self.spec.slowdown_factor if elapsed >= self.spec.slowdown_after_s else 1.0

    async def _loop(self) -> None:
        spec = self.spec
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            prefill = self._admit()
            load = len(self.running) / spec.max_num_seqs
            stretch = 1.0 + (spec.time_factor_under_load - 1.0) * load
            step = (prefill + self.profile.inter_token_latency_s * stretch) * self.slowness()
            self.metrics.update(self)
            step_started = time.monotonic()
            await asyncio.sleep(step * self.time_scale)
            now = time.monotonic()
            still = []
            decoded = 0
            for request in self.running:
                if request.generated == 0:
                    request.first_token_at = now
                    self.metrics.ttft.observe((now - request.arrived) / self.time_scale)
                    self.metrics.prefill_time.observe((now - request.admitted_at) / self.time_scale)
                    self.metrics.prompt_tokens.inc(request.prompt_tokens)
                else:
                    decoded += 1
                request.generated += 1
                request.tokens.put_nowait(request.generated)
                if request.generated >= request.max_tokens:
                    request.tokens.put_nowait(None)
                    self.kv_used -= request.prompt_tokens + request.max_tokens
                    self._finished(request, now)
                else:
                    still.append(request)
            self.running = still
            if decoded:
                self.metrics.inter_token_latency.observe_many((now - step_started) / self.time_scale, decoded)
            self.metrics.update(self)

    def _finished(self, request: _Request, now: float) -> None:
        self.served += 1
        scale = self.time_scale
        e2e = (now - request.arrived) / scale
        self.metrics.e2e.observe(e2e)
        self.metrics.generation_tokens.inc(request.generated)
        self.records.append(
            {
                "request_id": request.rid,
                "model": request.model,
                "prompt_tokens": request.prompt_tokens,
                "completion_tokens": request.generated,
                "prefix_hit_tokens": request.cached_tokens,
                "ttft_s": (request.first_token_at - request.arrived) / scale,
                "prefill_s": request.prefill_s,
                "e2e_s": e2e,
            }
        )


class BulkHistogram(Collector):
    """A histogram that takes one value for many observations at once (every sequence in a
    decode step saw the same inter-token latency): one call per step, not per sequence."""

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], labels: dict[str, str]
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe_many(self, value: float, count: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.total += value * count

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), float(cumulative)))
        family.add_metric(list(self.labels.values()), buckets, self.total)
        yield family


class SimMetrics:
    """vLLM's metric names (vllm/v1/metrics/loggers.py), one registry per endpoint."""

    def __init__(self, spec: EndpointSpec) -> None:
        self.registry = registry = CollectorRegistry()
        model = spec.models[0]

        def per_model(kind: Any, name: str, documentation: str, **options: Any) -> Any:
            return kind(name, documentation, ["model_name", "engine"], registry=registry, **options).labels(
                model, "0"
            )

        self.running = per_model(Gauge, "vllm:num_requests_running", "Requests in model execution batches.")
        self.waiting = per_model(Gauge, "vllm:num_requests_waiting", "Requests waiting to be processed.")
        self.kv_usage = per_model(
            Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_queries = per_model(
            Counter, "vllm:prefix_cache_queries", "Prefix cache queries, in tokens."
        )
        self.prefix_hits = per_model(Counter, "vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.prompt_tokens = per_model(Counter, "vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = per_model(Counter, "vllm:generation_tokens", "Generation tokens processed.")
        self.ttft = per_model(
            Histogram,
            "vllm:time_to_first_token_seconds",
            "Time to first token in seconds.",
            buckets=TTFT_BUCKETS,
        )
        self.e2e = per_model(
            Histogram,
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency in seconds.",
            buckets=E2E_BUCKETS,
        )
        self.queue_time = per_model(
            Histogram,
            "vllm:request_queue_time_seconds",
            "Time spent in WAITING phase for request.",
            buckets=E2E_BUCKETS,
        )
        self.prefill_time = per_model(
            Histogram,
            "vllm:request_prefill_time_seconds",
            "Time spent in PREFILL phase for request.",
            buckets=E2E_BUCKETS,
        )
        self.inter_token_latency = BulkHistogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
            {"model_name": model, "engine": "0"},
        )
        registry.register(self.inter_token_latency)
        Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            ["block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"],
            registry=registry,
        ).labels("16", str(spec.kv_capacity_tokens // 16), "True", "0").set(1)
        self.lora = Gauge(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            registry=registry,
        )
        self.lora.labels(str(len(spec.lora_adapters)), ",".join(spec.lora_adapters), "").set(time.time())

    def update(self, engine: Engine) -> None:
        self.running.set(len(engine.running))
        self.waiting.set(len(engine.waiting))
        self.kv_usage.set(min(1.0, engine.kv_used / engine.spec.kv_capacity_tokens))


def _chunk(rid: str, model: str, created: int, chat: bool, text: str | None, finish: str | None) -> bytes:
    if chat:
        delta = {"content": text} if text is not None else {}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    payload = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status)


class SimEndpoint:
    """One model server: its engine, metrics, HTTP listener and fault switches."""

    def __init__(self, spec: EndpointSpec, host: str, time_scale: float) -> None:
        self.spec = spec
        self.host = host
        self.time_scale = time_scale
        self.metrics = SimMetrics(spec)
        self.engine = Engine(spec, time_scale, self.metrics)
        self.ready_at = time.monotonic() + spec.warmup_s * time_scale
        self.error_rate = spec.error_rate
        self.hang = False
        self.metrics_mode = "normal"
        self.runner: web.AppRunner | None = None
        self.port = spec.port
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.AbstractServer | None = None
        # Requests per SHA-256 prefix of each credential header value received: a hosted
        # provider's key reaching a self-hosted endpoint shows up here without the key itself.
        self.credential_hashes: dict[str, int] = {}
        self.load_polls = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "models": list(self.spec.models),
            "pool": self.spec.pool,
            "gpu_class": self.spec.gpu_class,
            "zone": self.spec.zone,
        }

    @property
    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        add_api_routes(app, self)  # Responses, Messages, rerank, score, tokenize, audio
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/load", self.load)
        # SGLang's name, which vllm-router (forked from SGLang's router) polls.
        app.router.add_get("/get_load", self.load)
        app.router.add_post("/sim/control", self.control)
        app.router.add_get("/sim/stats", self.stats)
        return app

    async def start(self) -> None:
        self.engine.start()
        listening = await listen(self.app(), self.host, self.port, reuse_address=True)
        self.runner, self._listener, self.port = listening.runner, listening.server, listening.port

    async def stop(self) -> None:
        for task in list(self.in_flight):
            task.cancel()
        await self.engine.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def crash(self) -> None:
        """Like a dead process: the listener closed and every connection reset at once, idle
        keep-alive ones included (a graceful shutdown would keep serving requests that arrive on
        them, against a stopped engine, until its drain timeout). Connection refused from now on."""
        if self.runner is not None and self.runner.server is not None:
            if self._listener is not None:
                self._listener.close()
            for connection in list(self.runner.server.connections):
                if connection.transport is not None:
                    connection.transport.abort()
        await self.stop()

    async def restart(self) -> None:
        self.engine = Engine(self.spec, self.time_scale, self.metrics)
        await self.start()

    def generate(self, rid: str, model: str, text: str, max_tokens: int) -> _Request:
        """Queue a generation on this endpoint's engine (the other APIs' handlers use it)."""
        job = _Request(
            rid,
            model,
            estimate_tokens(text),
            max_tokens,
            prompt_blocks(text, self.spec.block_size_tokens),
            time.monotonic(),
        )
        self.engine.submit(job)
        return job

    def _headers(self, request: web.Request, rid: str) -> dict[str, str]:
        return {
            "x-sim-endpoint": self.address,
            "x-sim-request-id": rid,
            # Echoes for tests: what the router told the upstream.
            "x-sim-destination": request.headers.get("x-gateway-destination-endpoint", ""),
            "x-sim-llm-tier": request.headers.get("x-llm-tier", ""),
            "x-sim-model": request.headers.get("x-llm-model", ""),
            "x-sim-priority": request.headers.get("x-llm-priority", ""),
            # Envoy tells the upstream the timeout it enforces (the route's, or ext_proc's override).
            "x-sim-expected-timeout-ms": request.headers.get("x-envoy-expected-rq-timeout-ms", ""),
        }

    async def _gate(self, request: web.Request) -> web.StreamResponse | None:
        if not self.ready:
            return _error(503, "model is loading", "service_unavailable")
        if self.hang:
            await asyncio.sleep(3600)
        if self.error_rate and random.random() < self.error_rate:
            return _error(500, "injected failure", "internal_error")
        return None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            return await self._completions(request)
        finally:
            self.in_flight.discard(task)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        for name in ("authorization", "api-key"):
            value = request.headers.get(name)
            if value:
                digest = hashlib.sha256(value.encode()).hexdigest()[:16]
                self.credential_hashes[digest] = self.credential_hashes.get(digest, 0) + 1
        gated = await self._gate(request)
        if gated is not None:
            return gated
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON", "invalid_request_error")
        model = body.get("model")
        if model not in self.spec.models and model not in self.spec.lora_adapters:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        chat = request.path.endswith("/chat/completions")
        if chat:
            text = "\n".join(
                m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                for m in body.get("messages", [])
            )
        else:
            prompt = body.get("prompt", "")
            text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        max_tokens = (
            body.get("max_tokens") or body.get("max_completion_tokens") or self.spec.default_max_tokens
        )
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        job = _Request(
            rid,
            model,
            estimate_tokens(text),
            int(max_tokens),
            prompt_blocks(text, self.spec.block_size_tokens),
            time.monotonic(),
        )
        self.engine.submit(job)
        created = int(time.time())
        headers = self._headers(request, rid)
        usage = {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.max_tokens,
            "total_tokens": job.prompt_tokens + job.max_tokens,
        }
        if not body.get("stream"):
            while await job.tokens.get() is not None:
                pass
            content = " ".join(f"tok{i}" for i in range(job.generated))
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length",
                }
            else:
                choice = {"index": 0, "text": content, "finish_reason": "length"}
            reply = {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            return web.json_response(reply, headers=headers)
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await response.prepare(request)
        if chat:
            first = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
            await response.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        while (token := await job.tokens.get()) is not None:
            await response.write(_chunk(rid, model, created, chat, f"tok{token - 1} ", None))
        await response.write(_chunk(rid, model, created, chat, None if chat else "", "length"))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            final = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        gated = await self._gate(request)
        if gated is not None:
            return gated
        body = await request.json()
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = [
            {"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2, 0.3]} for i in range(len(inputs))
        ]
        tokens = sum(estimate_tokens(str(x)) for x in inputs)
        reply = {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.json_response(reply, headers=self._headers(request, uuid.uuid4().hex))

    async def models(self, _request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "owned_by": "vllm"}
            for m in (*self.spec.models, *self.spec.lora_adapters)
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def metrics_page(self, _request: web.Request) -> web.StreamResponse:
        if self.metrics_mode == "hang":
            await asyncio.sleep(3600)
        if self.metrics_mode == "garbage":
            return web.Response(body=b"\x00\xffnot { prometheus\n" * 50, content_type="text/plain")
        if self.metrics_mode == "huge":
            return web.Response(body=b"# padding\n" * 1_000_000, content_type="text/plain")
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    async def load(self, _request: web.Request) -> web.Response:
        """vLLM's ``GET /load`` (with --enable-server-load-tracking): in-flight HTTP requests;
        also under SGLang's ``load`` key."""
        self.load_polls += 1
        load = len(self.in_flight)
        return web.json_response({"server_load": load, "load": load})

    async def control(self, request: web.Request) -> web.Response:
        change = await request.json()
        if "error_rate" in change:
            self.error_rate = float(change["error_rate"])
        if "hang" in change:
            self.hang = bool(change["hang"])
        if "ready" in change:
            self.ready_at = time.monotonic() if change["ready"] else float("inf")
        if "metrics_mode" in change:
            self.metrics_mode = str(change["metrics_mode"])
        if "slowdown" in change:
            self.engine.slowdown = float(change["slowdown"])
        if change.get("crash"):
            # Answer first, then close the listener.
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.crash()))
        return web.json_response({"ok": True})

    async def stats(self, _request: web.Request) -> web.Response:
        engine = self.engine
        return web.json_response(
            {
                "address": self.address,
                "served": engine.served,
                "load_polls": self.load_polls,
                "running": len(engine.running),
                "waiting": len(engine.waiting),
                "kv_used_tokens": engine.kv_used,
                "records": list(engine.records),
                "credential_hashes": self.credential_hashes,
            }
        )


def default_fleet(n: int) -> list[EndpointSpec]:
    """Half fast (A100-class, pool "fast", both models), half slow (T4-class, pool "slow")."""
    specs = []
    fast = max(1, n // 2)
    for i in range(n):
        if i < fast:
            specs.append(
                EndpointSpec(
                    models=("llama-3-8b", "llama-3-70b"),
                    pool="fast",
                    gpu_class="a100",
                    zone=f"zone-{'ab'[i % 2]}",
                )
            )
        else:
            specs.append(
                EndpointSpec(
                    models=("llama-3-8b",),
                    pool="slow",
                    gpu_class="t4",
                    zone=f"zone-{'ab'[i % 2]}",
                    kv_capacity_tokens=20_000,
                    max_num_seqs=32,
                )
            )
    return specs


def load_fleet_spec(path: Path) -> list[EndpointSpec]:
    """YAML/JSON: {"endpoints": [{EndpointSpec fields...}, ...]}; unknown fields are errors."""
    data = yaml.safe_load(path.read_text())
    known = {f.name for f in fields(EndpointSpec)}
    specs = []
    for i, entry in enumerate(data.get("endpoints", [])):
        unknown = set(entry) - known
        if unknown:
            raise ValueError(
                f"{path}: endpoints[{i}]: unknown fields {sorted(unknown)}; known: {sorted(known)}"
            )
        for key in ("models", "lora_adapters"):
            if key in entry:
                entry[key] = tuple(entry[key])
        specs.append(EndpointSpec(**entry))
    return specs


class SimFleet:
    def __init__(self, endpoints: list[SimEndpoint]) -> None:
        self.endpoints = endpoints

    async def stop(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.stop()


async def start_fleet(
    specs: list[EndpointSpec], host: str = "127.0.0.1", time_scale: float = 1.0
) -> SimFleet:
    endpoints = [SimEndpoint(spec, host, time_scale) for spec in specs]
    for endpoint in endpoints:
        await endpoint.start()
    return SimFleet(endpoints)


async def _serve(specs: list[EndpointSpec], args: argparse.Namespace) -> None:
    fleet = await start_fleet(specs, args.host, args.time_scale)
    ready = json.dumps({"endpoints": [e.describe() for e in fleet.endpoints]})
    print(ready, flush=True)
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(ready)
        tmp.replace(args.ready_file)  # atomic: readers never see half a file
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-extproc sim", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=4, help="size of the default fleet")
    parser.add_argument("--fleet", help="fleet spec file (YAML/JSON) instead of the default fleet")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=0, help="first port (0 = ephemeral ports)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every simulated duration")
    parser.add_argument("--ready-file", help="write the endpoint list here once every listener is bound")
    args = parser.parse_args(argv)
    specs = load_fleet_spec(Path(args.fleet)) if args.fleet else default_fleet(args.endpoints)
    if args.base_port:
        for i, spec in enumerate(specs):
            spec.port = spec.port or args.base_port + i
    try:
        import uvloop

        uvloop.run(_serve(specs, args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
