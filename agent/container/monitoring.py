"""Watching the Docker Engine: the container event stream, daemon health, and usage samples.

One long-lived event stream (its own docker-py client and thread, see ``DockerAPI.events``)
feeds the pool supervisor. When the Engine stops answering, the stream ends; the watcher marks
Docker unavailable, retries with exponential backoff, and on reconnecting asks for the events it
missed (``since``, the last event's second, so some may come twice: handlers are idempotent) and
calls ``on_connected`` so the supervisor re-checks every runner against what Docker now has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from agent.container.docker_api import ContainerEvent, DockerAPI, DockerError

log = logging.getLogger(__name__)

RETRY_MIN = 0.5  # seconds before the first reconnection attempt
RETRY_MAX = 30.0


@dataclass
class DockerHealth:
    """Whether the Docker Engine answers, for the supervisor, health checks and metrics."""

    available: bool = True
    outages: int = 0  # times it went from available to unavailable
    last_error: str | None = None
    _changed: trio.Event = field(default_factory=trio.Event, repr=False)

    def mark_down(self, error: str) -> None:
        self.last_error = error
        if self.available:
            self.available = False
            self.outages += 1
            log.error("Docker Engine unavailable, retrying with backoff: %s", error)
            self._notify()

    def mark_up(self) -> None:
        if not self.available:
            self.available = True
            log.warning("Docker Engine available again")
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_available(self, available: bool = True) -> None:
        """Return once ``available`` is as asked; the caller bounds the wait."""
        while self.available != available:
            await self._changed.wait()


async def watch_events(
    docker: DockerAPI,
    handle: Callable[[ContainerEvent], Awaitable[None]],
    *,
    health: DockerHealth,
    on_connected: Callable[[], Awaitable[None]],
    instance: str | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow gantryd's container events (``instance``'s only, when given) until cancelled,
    reconnecting with backoff.

    started() once the first stream is open (or the first attempt failed: the supervisor must
    not wait on Docker to start). Events are handled one at a time, in order.
    """
    since = int(time.time())
    delay = RETRY_MIN
    started = False
    while True:
        try:
            await docker.ping()
            async with docker.events(since=since, instance=instance) as events:
                health.mark_up()
                delay = RETRY_MIN
                if not started:
                    task_status.started()
                    started = True
                await on_connected()
                async for event in events:
                    since = event.time_nano // 1_000_000_000
                    await handle(event)
            # The stream ended: the Engine went away (or restarted). The ping says which.
        except DockerError as exc:
            health.mark_down(str(exc))
        if not started:
            task_status.started()
            started = True
        await trio.sleep(delay)
        delay = min(RETRY_MAX, delay * 2)
