"""Fixtures: a real redis-server per test session, and a ``queue`` over both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from agent.queue.base import JobQueue
from agent.queue.redis import open_redis_queue
from agent.queue.sqlite import open_sqlite_queue
from tests.queue.queue_support import NO_JITTER, FakeClock, RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Opener = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["sqlite", "redis"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """A function opening a fresh queue of the parametrised backend (``**kwargs`` passed on)."""
    if request.param == "sqlite":
        return lambda **kw: open_sqlite_queue(tmp_path / "queue.db", **kw)
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return lambda **kw: open_redis_queue(server.url, prefix=prefix, **kw)


@pytest.fixture
async def queue(open_backend: Opener, clock: FakeClock) -> AsyncIterator[JobQueue]:
    async with open_backend(retry=NO_JITTER, clock=clock) as q:
        yield q
