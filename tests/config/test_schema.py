"""agent/config/schema.py: every key documented, its reload column, restart_required."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    PriorityRule,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
    restart_required,
)
from tests.config.files import EXAMPLE, REFERENCE


def _documented_keys(text: str) -> set[str]:
    return set(re.findall(r"^#? ?(\w+) = ", text, flags=re.MULTILINE))


@pytest.mark.parametrize(
    "cls", [ServerConfig, GitHubConfig, QueueConfig, SchedulerConfig, PoolConfig, PriorityRule]
)
def test_example_and_reference_document_every_key(cls: type[object]) -> None:
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    assert fields - _documented_keys(EXAMPLE.read_text()) == set()
    reference = REFERENCE.read_text()
    assert {name for name in fields if f"`{name}`" not in reference} == set()


def test_nothing_changed_needs_no_restart(config: Config) -> None:
    assert restart_required(config, config) == []


def test_pool_and_limit_changes_apply_live(config: Config) -> None:
    pool = dataclasses.replace(config.pools[0], memory=1024**3, max_runners=8)
    new = dataclasses.replace(
        config, pools=(pool,), scheduler=dataclasses.replace(config.scheduler, max_runners=20)
    )
    assert restart_required(config, new) == []


@pytest.mark.parametrize(
    ("table", "changes", "expected"),
    [
        ("server", {"listen": "127.0.0.1:1"}, ["server.listen"]),
        ("server", {"metrics_listen": "127.0.0.1:2"}, ["server.metrics_listen"]),
        # state_dir also moves the default queue file
        ("server", {"state_dir": Path("/srv/g")}, ["server.state_dir", "queue.path"]),
        ("server", {"runtime_dir": Path("/run/x")}, ["server.runtime_dir"]),
        ("queue", {"backend": "redis"}, ["queue.backend"]),
        ("queue", {"path": Path("/srv/q.db")}, ["queue.path"]),
        ("queue", {"path": Path("/var/lib/gantryd/queue.db")}, []),  # same file, spelled out
        ("queue", {"redis_url": "redis://127.0.0.1:6380/0"}, ["queue.redis_url"]),
        ("queue", {"redis_prefix": "other", "lease": 60.0}, ["queue.redis_prefix"]),
        # The retry policy is handed to the backend when the queue opens.
        (
            "queue",
            {"retry_attempts": 9, "retry_delay": 1.0},
            ["queue.retry_attempts", "queue.retry_delay"],
        ),
        ("queue", {"synchronous": "normal"}, ["queue.synchronous"]),
        (
            "server",
            {"instance": "other", "log_format": "json"},
            ["server.instance", "server.log_format"],
        ),
        ("server", {"read_timeout": 9.0}, ["server.read_timeout"]),
        ("github", {"api_url": "https://ghes.example/api/v3"}, ["github.api_url"]),
        # Credentials and the client's limits follow a reload.
        ("github", {"app_id": "7", "request_timeout": 5.0, "max_concurrency": 2}, []),
        ("scheduler", {"concurrency": 1}, []),
    ],
)
def test_restart_required(
    config: Config, table: str, changes: dict[str, object], expected: list[str]
) -> None:
    section = dataclasses.replace(getattr(config, table), **changes)
    assert restart_required(config, dataclasses.replace(config, **{table: section})) == expected
