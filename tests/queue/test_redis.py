"""What only the Redis backend has: the server checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import trio

from agent.queue.base import EnqueueOutcome, QueueUnavailable
from agent.queue.redis import open_redis_queue
from tests.queue import queue_support
from tests.queue.queue_support import RedisServer, spec


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


async def test_scripts_are_reloaded_when_the_server_forgot_them(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        async with open_redis_queue(redis_server.url, prefix="reload") as queue:
            client.script_flush()  # what a restart without persistence of scripts does
            assert await queue.enqueue(spec(1)) is EnqueueOutcome.CREATED
            client.script_flush()
            outcomes: list[EnqueueOutcome] = []

            async def enqueue(job_id: int) -> None:
                outcomes.append(await queue.enqueue(spec(job_id)))

            async with trio.open_nursery() as nursery:  # these share one pipelined round trip
                for job_id in range(1, 6):
                    nursery.start_soon(enqueue, job_id)
            assert sorted(outcomes) == sorted([EnqueueOutcome.KNOWN] + [EnqueueOutcome.CREATED] * 4)
    finally:
        client.close()


async def test_calls_sharing_a_lost_round_trip_all_fail(tmp_path: Path) -> None:
    server = queue_support.start_redis(tmp_path)
    try:
        async with open_redis_queue(server.url, prefix="lost") as queue:
            assert await queue.enqueue(spec(1)) is EnqueueOutcome.CREATED
            server.process.terminate()
            server.process.wait(timeout=10)
            failures: list[str] = []

            async def enqueue(job_id: int) -> None:
                with pytest.raises(QueueUnavailable, match="unreachable") as info:
                    await queue.enqueue(spec(job_id))
                failures.append(str(info.value))

            async with trio.open_nursery() as nursery:  # one alone, then four together
                for job_id in range(2, 7):
                    nursery.start_soon(enqueue, job_id)
            assert len(failures) == 5
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
