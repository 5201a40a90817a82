"""open_queue picks the backend from the configuration."""

from __future__ import annotations

from pathlib import Path

from agent.config import Config, GitHubConfig, QueueConfig, SchedulerConfig, ServerConfig
from agent.queue import open_queue
from agent.queue.base import EnqueueOutcome
from agent.queue.redis import RedisQueue
from agent.queue.sqlite import SQLiteQueue
from tests.queue.queue_support import RedisServer, spec


def _config(tmp_path: Path, queue: QueueConfig) -> Config:
    return Config(
        path=tmp_path / "config.toml",
        server=ServerConfig(state_dir=tmp_path),
        github=GitHubConfig(),
        queue=queue,
        scheduler=SchedulerConfig(),
        pools=(),
    )


async def test_sqlite_in_state_dir(tmp_path: Path) -> None:
    async with open_queue(_config(tmp_path, QueueConfig())) as q:
        assert isinstance(q, SQLiteQueue)
        assert await q.enqueue(spec(1)) is EnqueueOutcome.CREATED
    assert (tmp_path / "queue.db").exists()


async def test_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    queue = QueueConfig(backend="redis", redis_url=redis_server.url, redis_prefix="init")
    async with open_queue(_config(tmp_path, queue)) as q:
        assert isinstance(q, RedisQueue)
