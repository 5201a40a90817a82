"""Fixtures: a real redis-server for the fleet tests, and a fresh key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.fleet._redis import FleetRedis
from tests.queue.queue_support import RedisServer, start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def fleet_redis(redis_server: RedisServer, prefix: str) -> AsyncIterator[FleetRedis]:
    r = FleetRedis(redis_server.url, prefix=prefix)
    yield r
    await r.aclose()
