"""The event streams' Redis connection: redis-py's blocking client on threads of its own.

Not the queue's connection (``agent.queue.redis`` keeps its thread for queue scripts): a host's
event stream is read with a blocking ``XREADGROUP``, which would stall every queue call behind
it. Commands run one at a time on one ``WorkerThread``; the blocking read has its own thread and
connection. Errors that mean "Redis is away" become ``FleetUnavailable`` (the callers retry).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import redis
import redis.exceptions
import trio

from agent.config import QueueConfig
from agent.queue.base import QueueUnavailable
from agent.storage.redis_connection import redis_client, unreachable
from agent.storage.redis_handle import REFUSALS
from agent.storage.worker_thread import WorkerThread

T = TypeVar("T")

BLOCK_MS = 1000  # how long one blocking read waits on the server before it returns empty


class FleetUnavailable(QueueUnavailable):
    """Redis did not answer or refused the write; the shared state is unchanged or unknown."""


def _calling(fn: Callable[[redis.Redis[str]], T], client: redis.Redis[str]) -> T:
    """``fn(client)``, with the errors that mean "Redis is away" as ``FleetUnavailable``."""
    try:
        return fn(client)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise FleetUnavailable(unreachable(exc)) from exc
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith(REFUSALS):
            raise FleetUnavailable(f"Redis refused the write: {exc}") from exc
        raise


class StreamRedis:
    """Commands (``run``) and one blocking reader (``read``) on a Redis server; keys under
    ``{prefix}:fleet:``, the queue's hash tag, so Lua scripts may touch any of them."""

    def __init__(self, url: str, *, prefix: str, queue: QueueConfig | None = None) -> None:
        """``queue`` gives the password and CA files of ``[queue]`` (TLS, AUTH, Sentinel alike
        for every client of the server)."""
        connect = partial(
            redis_client,
            url,
            password_file=queue.redis_password_file if queue else None,
            ca_file=queue.redis_ca_file if queue else None,
            sentinel_password_file=queue.redis_sentinel_password_file if queue else None,
        )
        self.client = connect()
        self._reader = connect(socket_timeout=BLOCK_MS / 1000 + 5)
        self.base = f"{{{prefix}}}:"
        self.keys = [self.base]
        self._thread: WorkerThread | None = None
        self._read_limiter = trio.CapacityLimiter(1)

    def key(self, *parts: str | int) -> str:
        return self.base + "fleet:" + ":".join(str(p) for p in parts)

    async def run(self, fn: Callable[[redis.Redis[str]], T]) -> T:
        """Run ``fn(client)`` on the command thread; never abandoned once submitted."""
        if self._thread is None:
            self._thread = WorkerThread("redis fleet")

        return await self._thread.run(partial(_calling, fn, self.client))

    async def read(self, fn: Callable[[redis.Redis[str]], T]) -> T:
        """Run a blocking read ``fn(reader)`` on its own thread; abandoned on cancellation (a
        read changes nothing that is not read again: unacknowledged entries stay pending)."""

        return await trio.to_thread.run_sync(
            partial(_calling, fn, self._reader), limiter=self._read_limiter, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self._thread is not None:
                await self._thread.aclose()
            await trio.to_thread.run_sync(self.client.close)
            await trio.to_thread.run_sync(self._reader.close)
