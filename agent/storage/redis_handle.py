"""The fleet's Redis handle, importable without redis-py (an optional dependency): the daemon,
the admin server and the secrets module name it whatever the backend, and only a Redis backend
opens one (``open_fleet_redis`` imports ``agent.storage.redis_connection``, which needs redis-py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import trio

from agent.config import QueueConfig
from agent.storage.errors import StorageUnavailable

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

# Error replies meaning "not now" (a replica, loading, a failed save, full, a long script, too
# few replicas for min-replicas-to-write): Redis is unavailable, not the command wrong.
REFUSALS = ("READONLY", "LOADING", "MISCONF", "OOM", "BUSY", "NOREPLICAS")


class RedisUnavailable(StorageUnavailable):
    """Redis did not answer (down, failing over, refusing writes): the fleet chore waits."""


class FleetRedis:
    """The fleet's own client (leases, host records, rate limits, secrets), its calls run on a
    thread of its own so they never queue behind the job queue's round trips.

    ``prefix`` is the queue's ``redis_prefix``: every key is ``{prefix}:…`` (one hash tag, as
    the queue's), so one server holds several installations apart.
    """

    def __init__(self, client: redis.Redis[str], *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._limiter = trio.CapacityLimiter(1)

    def key(self, *parts: str) -> str:
        return ":".join((f"{{{self.prefix}}}", *parts))

    async def run(self, fn: Callable[[redis.Redis[str]], T]) -> T:
        """Run ``fn(client)`` on a thread; connection failures become ``RedisUnavailable``."""

        import redis.exceptions  # loaded already: this client was made with it

        from agent.storage.redis_connection import unreachable

        def call() -> T:
            try:
                return fn(self.client)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise RedisUnavailable(unreachable(exc)) from exc
            except redis.exceptions.ResponseError as exc:
                if str(exc).startswith(REFUSALS):
                    raise RedisUnavailable(f"Redis refused: {exc}") from exc
                raise

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.client.close, limiter=self._limiter)


@asynccontextmanager
async def open_fleet_redis(queue: QueueConfig) -> AsyncIterator[FleetRedis]:
    """The fleet's client for the queue's server (``[queue] redis_*``), closed on exit."""
    from agent.storage.redis_connection import redis_client

    client = redis_client(
        queue.redis_url,
        password_file=queue.redis_password_file,
        ca_file=queue.redis_ca_file,
        sentinel_password_file=queue.redis_sentinel_password_file,
    )
    fleet = FleetRedis(client, prefix=queue.redis_prefix)
    try:
        yield fleet
    finally:
        await fleet.aclose()
