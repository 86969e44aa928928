"""Binding an aiohttp application to a port: the metrics endpoint, the Wasm brain and the
simulators all start the same way, and port 0 must give back the port the OS chose."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Listening:
    runner: web.AppRunner
    # The bound socket's server: its port, and closing it stops new connections at once.
    server: asyncio.AbstractServer
    port: int


async def listen(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_address: bool | None = None,
) -> Listening:
    """Serve ``app`` on ``host:port`` (0: any free port), without access lines or signal handlers."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=reuse_address)
    await site.start()
    server = site._server  # aiohttp keeps the bound server private; the chosen port is only here
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    return Listening(runner, server, int(server.sockets[0].getsockname()[1]))  # type: ignore[attr-defined]
