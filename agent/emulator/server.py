"""Serving the emulator over HTTP with hypercorn's trio worker.

`serve_emulator` runs the webhook sender (`Emulator.run`) and the HTTP server side by side in
one nursery, and reports the bound base URL only once both are ready, so a caller can hand out
JIT configs and queue jobs right after ``nursery.start`` returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from agent.emulator import (
    actions_service,
    broker,
    checks_rest,
    control,
    deliveries,
    repos,
    rest,
    runs,
)
from agent.emulator.asgi import App, Receive, Scope, Send
from agent.emulator.headers import require_headers
from agent.emulator.state import Emulator


def build_app(emulator: Emulator) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app: GitHub's REST API (its edge header rules first, then rate limits), the
    runner broker and the control API."""
    app = App(
        [
            *rest.build_routes(emulator),
            *checks_rest.build_routes(emulator),
            *deliveries.build_routes(emulator),
            *runs.build_routes(emulator),
            *repos.build_routes(emulator),
            *broker.build_routes(emulator),
            *actions_service.build_routes(emulator),
            *control.build_routes(emulator),
        ]
    )
    return require_headers(emulator.rate_limits.middleware(app))


async def serve_emulator(
    emulator: Emulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``emulator`` until cancelled; ``task_status.started(base_url)`` once bound.

    ``port=0`` picks a free port. The base URL also becomes ``emulator.base_url`` (it appears in
    JIT configs and payload URLs). Cancellation stops the server at once, open long-polls too.
    """
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        binds: list[str] = await nursery.start(serve, build_app(emulator), config)
        emulator.base_url = binds[0]
        task_status.started(emulator.base_url)
