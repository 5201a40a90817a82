"""What only the Redis backend has: the server checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from agent.queue.base import QueueUnavailable
from agent.queue.redis import open_redis_queue
from tests.queue import queue_support
from tests.queue.queue_support import RedisServer


async def test_refuses_an_evicting_server(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(QueueUnavailable, match="maxmemory-policy is 'allkeys-lru'"):
            async with open_redis_queue(redis_server.url, prefix="evict"):
                pass
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


async def test_unreachable_server_is_unavailable() -> None:
    from tests.queue.queue_support import free_port

    with pytest.raises(QueueUnavailable, match="unreachable"):
        async with open_redis_queue(f"redis://127.0.0.1:{free_port()}/0"):
            pass


def test_missing_redis_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(queue_support, "REDIS_SERVER", "redis-server-not-installed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        queue_support.start_redis(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        queue_support.start_redis(tmp_path)
