"""The metrics and health HTTP endpoint, on its own port beside the gRPC server.

`/metrics` is the Prometheus exposition; `/healthz` is JSON for humans and probes: whether the
fleet has synced, the active policy version and the last policy reload error. It runs on the
same event loop; exposition of a 1,000-endpoint fleet takes a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from extproc.observability.listen import listen
from extproc.observability.metrics import Metrics


class MetricsServer:
    def __init__(self, metrics: Metrics, status: Callable[[], dict[str, Any]]) -> None:
        self.metrics = metrics
        self.status = status
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"content-type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        status = self.status()
        return web.json_response(status, status=200 if status.get("synced") else 503)

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        listening = await listen(app, host, port)
        self._runner, self.port = listening.runner, listening.port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
