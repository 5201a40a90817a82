"""Helpers shared by the queue tests: a fake clock, job specs, a real redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from agent.queue.base import JobSpec, RetryPolicy

REDIS_SERVER = "redis-server"
T0 = 1_800_000_000.0


class FakeClock:
    """The queues' clock: tests move time instead of sleeping."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]


def start_redis(directory: Path, *extra: str) -> RedisServer:
    """Start redis-server on a free loopback port; wait (with a deadline) until it answers."""
    binary = shutil.which(REDIS_SERVER)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (apt install redis-server)")
        pytest.skip("redis-server is not installed")
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--maxmemory-policy", "noeviction", *extra],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                return RedisServer(url, proc)
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)  # polling the server's readiness, bounded by the deadline
        client.close()
        proc.kill()
        proc.wait()
    pytest.fail("redis-server did not start")


NO_JITTER = RetryPolicy(attempts=2, delay=10.0, max_delay=100.0, jitter=0.0)


def spec(job_id: int, *, priority: int = 0, pool: str = "linux") -> JobSpec:
    return JobSpec(
        job_id=job_id,
        run_id=job_id * 10,
        run_attempt=1,
        repository="octo/repo",
        installation_id=7,
        labels=("self-hosted", "linux"),
        pool=pool,
        priority=priority,
        name=f"job {job_id}",
    )
