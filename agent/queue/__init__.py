"""The job queue: the contract in ``base``, an embedded SQLite backend and a shared Redis one.

Layering: ``base`` (types, no I/O; its errors are ``agent.storage``'s) <- ``sqlite`` (tables in
``sqlite_schema``, read-only queries in ``sqlite_queries``, via ``agent.db``) and ``redis``
(scripts in ``redis_scripts``, batching from ``agent.storage.group_commit``); ``open_queue``
picks one from the configuration. Nothing outside this package issues SQL or Redis commands on
the queue's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.config import Config
from agent.queue.base import JobQueue, RetryPolicy


@asynccontextmanager
async def open_queue(config: Config) -> AsyncIterator[JobQueue]:
    """Open the backend named by ``[queue] backend``; it is closed when the block exits."""
    q = config.queue
    retry = RetryPolicy(attempts=q.retry_attempts, delay=q.retry_delay)
    if q.backend == "redis":
        from agent.queue.redis import open_redis_queue  # redis-py is an optional dependency

        async with open_redis_queue(
            q.redis_url,
            prefix=q.redis_prefix,
            retry=retry,
            password_file=q.redis_password_file,
            ca_file=q.redis_ca_file,
            sentinel_password_file=q.redis_sentinel_password_file,
        ) as rq:
            yield rq
    elif q.backend == "sqlite":
        from agent.queue.sqlite import open_sqlite_queue

        async with open_sqlite_queue(
            config.queue_path, synchronous=q.synchronous, retry=retry
        ) as sq:
            yield sq
    else:
        raise ValueError(f"[queue] backend must be 'sqlite' or 'redis', not {q.backend!r}")
