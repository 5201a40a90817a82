"""The metrics listener: ``GET /metrics`` on ``server.metrics_listen``, a listener of its own
(never the intake's)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from agent.ops.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class MetricsApp:
    """ASGI app: GET /metrics returns the exposition; everything else 404."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":  # hypercorn's trio worker needs the protocol answered
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            # 0.0.4: what Prometheus 2.x (Debian 12) and every scraper understand; names are
            # plain ASCII, so the output is the same.
            status, body, ctype = 200, self._metrics.exposition(), CONTENT_TYPE_PLAIN_0_0_4
        else:
            status, body, ctype = 404, b"not found; metrics are at /metrics\n", "text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def serve_metrics(
    metrics: Metrics,
    listen: str,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics on ``listen`` until cancelled; started() with the bound URLs."""
    config = hypercorn.config.Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    await hypercorn.trio.serve(MetricsApp(metrics), config, task_status=task_status)  # type: ignore[arg-type]
