"""Fixtures: one real redis-server per session, and a ``FleetRedis`` with a fresh prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.fleet.connection import redis_client
from agent.fleet.handle import FleetRedis
from tests.queue.queue_support import RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("fleet-redis"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
async def fleet(redis_server: RedisServer) -> AsyncIterator[FleetRedis]:
    handle = FleetRedis(redis_client(redis_server.url), prefix=f"f{uuid.uuid4().hex[:10]}")
    yield handle
    await handle.aclose()
