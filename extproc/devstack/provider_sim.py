"""A simulated hosted LLM provider (OpenAI or Azure OpenAI shaped), served over TLS on loopback.

The test double for provider pools: it answers only with the right credential
(``Authorization: Bearer <key>`` for the OpenAI shape, ``api-key: <key>`` for Azure's), can be told
to answer 429 with ``retry-after`` for a while and to add latency, and records every credential
misuse it sees, so a test or a benchmark can count leaks: a client's own credential arriving
here, or the provider key arriving without being asked for.

The certificate comes from a CA generated at start (trustme); only the CA certificate is written
out, for Envoy's ``trusted_ca``. The expected key is re-read from its file on every request, so a
rotated Kubernetes Secret is seen at once.

Never imported by the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from extproc.observability.listen import listen

# Requests carrying this prefix in a credential header are a client's credential: tests and the
# benchmark send client tokens of this shape, so seeing one here is a leak.
CLIENT_TOKEN_PREFIX = "client-"
DEFAULT_HOSTNAME = "api.provider.test"


@dataclass
class ProviderBehaviour:
    """What the double does now; changed at runtime through POST /sim/control."""

    ttft_s: float = 0.05  # before the first byte (non-streaming: before the whole answer)
    inter_token_s: float = 0.0
    rate_limited_until: float = 0.0  # monotonic: answer 429 until then
    retry_after_s: float = 1.0
    fail_status: int = 0  # answer this status (e.g. 503) while set
    cut_after_chunks: int = 0  # streams: drop the connection after this many chunks (0 = never)
    reset: bool = False  # drop every connection before answering


@dataclass
class ProviderStats:
    served: int = 0
    unauthorized: int = 0
    rate_limited: int = 0
    failed: int = 0
    cut_streams: int = 0
    credential_leaks: int = 0  # a client credential, or any credential in the wrong header
    prompt_tokens: int = 0
    completion_tokens: int = 0
    models: dict[str, int] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": kind}}
    return web.json_response(body, status=status, headers=headers)


class ProviderSim:
    def __init__(self, key_file: Path, flavour: str = "openai", hostname: str = DEFAULT_HOSTNAME) -> None:
        if flavour not in ("openai", "azure-openai"):
            raise ValueError(f"unknown flavour {flavour!r}")
        self.key_file = key_file
        self.flavour = flavour
        self.hostname = hostname
        self.behaviour = ProviderBehaviour()
        self.stats = ProviderStats()
        self.ca = trustme.CA()
        self._cert = self.ca.issue_cert(hostname, "localhost", "127.0.0.1")
        self._runner: web.AppRunner | None = None
        self.port = 0

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        # Offer h2 like real providers do; aiohttp speaks HTTP/1.1, so ALPN settles on that.
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        """For tests talking to the double directly (control, stats)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def write_ca(self, path: Path) -> None:
        path.write_bytes(self.ca.cert_pem.bytes())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        for prefix in ("", "/v1"):
            app.router.add_post(prefix + "/chat/completions", self.completions)
            app.router.add_post(prefix + "/completions", self.completions)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.completions)
        app.router.add_post("/openai/deployments/{deployment}/completions", self.completions)
        app.router.add_post("/sim/control", self.control)
        app.router.add_get("/sim/stats", self.stats_page)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        listening = await listen(self.app(), host, port, ssl_context=self.ssl_context())
        self._runner, self.port = listening.runner, listening.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _expected_key(self) -> str:
        try:
            return self.key_file.read_text().strip()
        except OSError:
            return ""

    def _authorised(self, request: web.Request) -> bool:
        """Checks the credential and records misuse: a client's credential is a leak wherever it is."""
        key = self._expected_key()
        authorization = request.headers.get("authorization", "")
        api_key = request.headers.get("api-key", "")
        for value in (authorization, api_key):
            if CLIENT_TOKEN_PREFIX in value:
                self.stats.credential_leaks += 1
                return False
        if self.flavour == "azure-openai":
            if authorization:
                self.stats.credential_leaks += 1  # Azure wants api-key: a bearer here is not ours
            return bool(key) and api_key == key
        if api_key:
            self.stats.credential_leaks += 1
        return bool(key) and authorization == f"Bearer {key}"

    async def completions(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.stats.paths[path] = self.stats.paths.get(path, 0) + 1
        if not self._authorised(request):
            self.stats.unauthorized += 1
            return _error(401, "invalid or missing API key", "invalid_api_key")
        if self.flavour == "azure-openai" and not request.query.get("api-version"):
            return _error(400, "api-version query parameter is required", "missing_api_version")
        behaviour = self.behaviour
        if time.monotonic() < behaviour.rate_limited_until:
            self.stats.rate_limited += 1
            retry_after = str(max(1, round(behaviour.retry_after_s)))
            return _error(429, "rate limit reached", "rate_limit_exceeded", {"retry-after": retry_after})
        if behaviour.reset:
            self.stats.failed += 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if behaviour.fail_status:
            self.stats.failed += 1
            return _error(behaviour.fail_status, "injected failure", "server_error")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body is not JSON", "invalid_request")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(400, "'model' is required", "invalid_request")
        model = str(request.match_info.get("deployment") or body["model"])
        self.stats.models[model] = self.stats.models.get(model, 0) + 1
        chat = "chat" in path
        text = json.dumps(body.get("messages") if chat else body.get("prompt"))
        prompt_tokens = max(1, len(text) // 4)
        max_tokens = body.get("max_tokens")
        completion_tokens = max_tokens if isinstance(max_tokens, int) and 0 < max_tokens <= 256 else 16
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.served += 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        rid = f"prov-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        await asyncio.sleep(behaviour.ttft_s)
        headers = {"x-provider-sim": self.hostname}
        if not body.get("stream"):
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok " * completion_tokens},
                    "finish_reason": "length",
                }
            else:
                choice = {"index": 0, "text": "ok " * completion_tokens, "finish_reason": "length"}
            kind = "chat.completion" if chat else "text_completion"
            answer = {"id": rid, "object": kind, "created": created, "model": model}
            return web.json_response({**answer, "choices": [choice], "usage": usage}, headers=headers)
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        for index in range(completion_tokens):
            piece: dict[str, Any] = {"delta": {"content": "ok "}} if chat else {"text": "ok "}
            last = index == completion_tokens - 1
            chunk = {
                "id": rid,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [{"index": 0, **piece, "finish_reason": "length" if last else None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if behaviour.cut_after_chunks and index + 1 >= behaviour.cut_after_chunks:
                self.stats.cut_streams += 1
                await asyncio.sleep(0.05)  # let the chunks reach the client first
                assert request.transport is not None
                request.transport.abort()  # mid-stream failure: the client already has bytes
                return response
            if behaviour.inter_token_s and not last:
                await asyncio.sleep(behaviour.inter_token_s)
        final = {"id": rid, "object": kind, "created": created, "model": model, "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def control(self, request: web.Request) -> web.Response:
        """{"rate_limit_for_s": 30, "retry_after_s": 5, "ttft_s": 0.2, "fail_status": 503,
        "cut_after_chunks": 3}"""
        change = await request.json()
        behaviour = self.behaviour
        if "rate_limit_for_s" in change:
            behaviour.rate_limited_until = time.monotonic() + float(change["rate_limit_for_s"])
        for name in ("retry_after_s", "ttft_s", "inter_token_s"):
            if name in change:
                setattr(behaviour, name, float(change[name]))
        if "fail_status" in change:
            behaviour.fail_status = int(change["fail_status"])
        if "reset" in change:
            behaviour.reset = bool(change["reset"])
        if "cut_after_chunks" in change:
            behaviour.cut_after_chunks = int(change["cut_after_chunks"])
        return web.json_response({"ok": True})

    async def stats_page(self, _request: web.Request) -> web.Response:
        stats = self.stats
        return web.json_response(
            {
                "served": stats.served,
                "unauthorized": stats.unauthorized,
                "rate_limited": stats.rate_limited,
                "failed": stats.failed,
                "cut_streams": stats.cut_streams,
                "credential_leaks": stats.credential_leaks,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "models": stats.models,
                "paths": stats.paths,
            }
        )


async def _serve(args: argparse.Namespace) -> None:
    sim = ProviderSim(Path(args.key_file), args.flavour, args.hostname)
    await sim.start(args.host, args.port)
    ready = {
        "address": f"{args.host}:{sim.port}",
        "port": sim.port,
        "hostname": args.hostname,
        "flavour": args.flavour,
    }
    if args.ca_file:
        sim.write_ca(Path(args.ca_file))
        ready["ca_file"] = args.ca_file
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(args.ready_file)
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provider-sim", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flavour", choices=("openai", "azure-openai"), default="openai")
    parser.add_argument("--hostname", default=DEFAULT_HOSTNAME, help="name on the certificate (SNI)")
    parser.add_argument("--key-file", required=True, help="the API key clients must present")
    parser.add_argument("--ca-file", default="", help="write the generated CA certificate here")
    parser.add_argument("--ready-file", default="")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
