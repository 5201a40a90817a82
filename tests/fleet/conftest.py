"""Fixtures: one real redis-server per session, a ``FleetRedis`` (leases, hosts, rate limits,
secrets) and a ``StreamRedis`` (event streams, check-run records) with a fresh prefix each; the
run's summary says when the e2e hosts fell back to loopback addresses (``host_network``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.fleet.stream_redis import StreamRedis
from agent.storage.redis_connection import redis_client
from agent.storage.redis_handle import FleetRedis
from tests.fleet import host_network
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


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def fleet_redis(redis_server: RedisServer, prefix: str) -> AsyncIterator[StreamRedis]:
    r = StreamRedis(redis_server.url, prefix=prefix)
    yield r
    await r.aclose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say when the fleet's hosts shared the root network namespace instead of one each."""
    for reason in dict.fromkeys(host_network.FALLBACKS):
        terminalreporter.write_line(
            f"fleet e2e: hosts on loopback addresses 127.0.0.x, not in network namespaces: {reason}"
        )
