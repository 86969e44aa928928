"""A real Envoy with the Wasm filter, in front of echo endpoints, polling a brain we control."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from extproc.deploy.wasm_config import FilterSettings, render_wasm
from extproc.devstack.stack import envoy_binary, free_port
from extproc.wasm.snapshot import SNAPSHOT_FORMAT

Reply = tuple[int, dict[str, str], bytes]


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the second waits for a
    # delayed ACK (40 ms) from Envoy.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


SLOW_HEADER = "x-test-slow"  # an endpoint holds a request carrying it until the event is set
slow_started = threading.Event()
release_slow = threading.Event()


class _Echo(_Quiet):
    """An endpoint that answers with what it received: its own address, headers and body."""

    def do_POST(self) -> None:
        received = self.body()
        self.server.authorities.append(self.headers.get("host", ""))  # type: ignore[attr-defined]
        if self.headers.get(SLOW_HEADER):
            slow_started.set()
            release_slow.wait(10)
        address = f"127.0.0.1:{self.server.server_address[1]}"
        self.answer(
            200,
            json.dumps(
                {
                    "endpoint": address,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": received.decode("utf-8", "replace"),
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                }
            ).encode(),
            {"content-type": "application/json"},
        )

    do_GET = do_POST


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What each request named as its host (a mirror's has "-shadow" before the port).
        self.authorities: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients (Envoy at shutdown) hang up mid-request; not a test failure


def _serve(server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class StaticBrain:
    """The brain's HTTP surface with a snapshot and decide answers set by the test."""

    snapshot: dict[str, Any] | None = None
    decide: Callable[[dict[str, str], bytes], dict[str, Any]] | None = None
    decided: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    polls: int = 0
    confirmed: dict[str, int] = field(default_factory=dict)  # 304s per version: polls that had it
    up: bool = True
    port: int = 0

    def start(self) -> None:
        brain = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                brain.polls += 1
                snapshot = brain.snapshot
                if not brain.up or snapshot is None:
                    self.answer(503, b"")
                elif self.headers.get("if-none-match") == snapshot["version"]:
                    brain.confirmed[snapshot["version"]] = brain.confirmed.get(snapshot["version"], 0) + 1
                    self.answer(304, b"")
                else:
                    self.answer(200, json.dumps(snapshot).encode(), {"content-type": "application/json"})

            def do_POST(self) -> None:
                body = self.body()
                if not brain.up:
                    self.answer(503, b"")
                elif self.path == "/v1/llm-extproc/observations":
                    brain.reports.append(json.loads(body))
                    self.answer(204, b"")
                else:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    brain.decided.append((headers, body))
                    answer = brain.decide(headers, body) if brain.decide else {"action": "continue"}
                    self.answer(200, json.dumps(answer).encode(), {"content-type": "application/json"})

        server = _serve(_Server(("127.0.0.1", 0), Handler))
        self.port = server.server_address[1]


class WasmEnvoy:
    def __init__(
        self,
        endpoints: int,
        workdir: Path,
        brain_port: int,
        concurrency: int = 1,
        module: Path | None = None,
        rewrite: Callable[[str, list[str]], str] | None = None,
        **settings: Any,
    ) -> None:
        """``module``: another Wasm module than the shipped one; ``rewrite``: changes the
        rendered config, given the fleet's addresses."""
        self.fleet = [_serve(_Server(("127.0.0.1", 0), _Echo)) for _ in range(endpoints)]
        self.addresses = [f"127.0.0.1:{s.server_address[1]}" for s in self.fleet]
        self.listen_port = free_port()
        self.admin_port = free_port()
        config = workdir / "envoy-wasm.yaml"
        text = render_wasm(
            self.addresses,
            listen_port=self.listen_port,
            admin_port=self.admin_port,
            brain_port=brain_port,
            settings=FilterSettings(**settings),
            module=module,
        )
        config.write_text(rewrite(text, self.addresses) if rewrite else text)
        self.log = workdir / "envoy-wasm.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(config),
                    "--concurrency",
                    str(concurrency),
                    "--disable-hot-restart",
                    "-l",
                    os.environ.get("WASM_ENVOY_LOG", "warn"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Envoy not ready:\n{self.log.read_text()}")

    def request(
        self, path: str, body: bytes | None, headers: dict[str, str] | None = None, method: str = "POST"
    ) -> Reply:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.listen_port}{path}",
            data=body,
            headers={"content-type": "application/json", **(headers or {})},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter=llm_wasm") as reply:
            text = reply.read().decode()
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name.rsplit(".", 1)[-1]] = int(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for server in self.fleet:
            server.shutdown()
            server.server_close()


def snapshot_for(addresses: list[str], **overrides: Any) -> dict[str, Any]:
    """A small snapshot (extproc.wasm.snapshot.SNAPSHOT_FORMAT): model "m" served by every address, scores falling by position."""
    snapshot: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "version": "v1",
        "endpoints_per_request": 3,
        "max_body_bytes": 4 * 1024 * 1024,
        "session_header": "x-user-id",
        "stale_after_ms": 2000,
        "available": "m",
        "routes": {
            f"{task}|{stream}|m|*": {"targets": [["m", ""]], "headers": []}
            for task in ("chat", "completion", "embedding")
            for stream in (0, 1)
        },
        "candidates": {
            "m|": {"endpoints": [[a, 1_000_000 * (len(addresses) - i)] for i, a in enumerate(addresses)]}
        },
    }
    snapshot.update(overrides)
    return snapshot


def started(
    tmp: Path, endpoints: int = 3, concurrency: int = 1, **settings: Any
) -> Iterator[tuple[WasmEnvoy, StaticBrain]]:
    brain = StaticBrain()
    brain.start()
    envoy = WasmEnvoy(endpoints, tmp, brain.port, concurrency, **settings)
    brain.snapshot = snapshot_for(envoy.addresses)
    try:
        yield envoy, brain
    finally:
        envoy.stop()
