"""agent/config/schema.py: every key documented, its reload column, restart_required."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    PriorityRule,
    QueueConfig,
    Reload,
    SchedulerConfig,
    ServerConfig,
    reload_schema,
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


# --- the reload column -----------------------------------------------------------------------

# Documented spellings that are not fields of their own: the loader turns them into the field.
SHORTHANDS = {"github.webhook_secret_file": "github.webhook_secret_files"}


def _reload_column(reference: str) -> dict[str, str]:
    """``table.key`` -> the reload column, from every key table under a ``## `[table]``` head."""
    column: dict[str, str] = {}
    table = None
    for line in reference.splitlines():
        if line.startswith("## "):
            heading = re.match(r"## `\[{1,2}(\w+)\]{1,2}`", line)
            table = heading.group(1) if heading else None
        elif table is not None and line.startswith("| `"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            key = f"{table}.{cells[0].strip('`')}"
            assert key not in column, f"{key} is documented twice"
            column[key] = cells[-1]
    return column


def test_the_reference_reload_column_is_the_schema() -> None:
    """Every documented key is in the schema and the other way round, and each applies on a
    reload exactly when docs/configuration.md says it does."""
    documented = _reload_column(REFERENCE.read_text())
    schema = {key: reload.value for key, reload in reload_schema().items()}
    for shorthand, key in SHORTHANDS.items():
        assert documented.pop(shorthand) == schema[key], shorthand
    assert documented == schema


def test_the_example_marks_exactly_the_restart_keys() -> None:
    marked: set[str] = set()
    table = ""
    for line in EXAMPLE.read_text().splitlines():
        if heading := re.fullmatch(r"#? ?\[{1,2}(\w+)\]{1,2}", line):
            table = heading.group(1)
        elif (key := re.match(r"#? ?(\w+) = ", line)) and "[restart]" in line:
            marked.add(f"{table}.{key.group(1)}")
    assert marked == {key for key, reload in reload_schema().items() if reload is Reload.RESTART}


def test_every_field_of_every_table_says_when_it_applies() -> None:
    tables = {
        "server": ServerConfig,
        "github": GitHubConfig,
        "queue": QueueConfig,
        "scheduler": SchedulerConfig,
        "pool": PoolConfig,
        "priority": PriorityRule,
    }
    fields = {f"{table}.{f.name}" for table, cls in tables.items() for f in dataclasses.fields(cls)}
    assert set(reload_schema()) == fields
    assert set(reload_schema().values()) == {Reload.LIVE, Reload.RESTART}


def _changed(value: object, annotation: str) -> object:
    """A different value of the same type."""
    match value:
        case bool():
            return not value
        case enum.Enum():
            return next(member for member in type(value) if member is not value)
        case int() | float():
            return value + 1
        case str():
            return value + "x"
        case Path():
            return value / "x"
        case tuple():
            return (*value, "x")
        case Mapping():
            return {**value, "X": "1"}
        case None:
            return Path("/x") if "Path" in annotation else "x"
    raise AssertionError(f"no change for {value!r}")


def _with_one_change(config: Config, key: str) -> Config:
    """``config`` with only ``key`` (``table.field``) changed; pools and rules: the first."""
    table, name = key.split(".")
    attribute = {"pool": "pools", "priority": "priorities"}.get(table, table)
    held = getattr(config, attribute)
    item = held[0] if isinstance(held, tuple) else held
    annotation = next(f.type for f in dataclasses.fields(item) if f.name == name)
    item = dataclasses.replace(item, **{name: _changed(getattr(item, name), str(annotation))})
    changed: dict[str, Any] = {attribute: (item, *held[1:]) if isinstance(held, tuple) else item}
    return dataclasses.replace(config, **changed)


@pytest.mark.parametrize("key", sorted(reload_schema()))
def test_restart_required_follows_the_metadata_of_each_key(config: Config, key: str) -> None:
    config = dataclasses.replace(config, priorities=(PriorityRule(priority=1),))
    reported = restart_required(config, _with_one_change(config, key))
    if reload_schema()[key] is Reload.LIVE:
        assert reported == []
    elif key == "server.state_dir":  # the default queue file is in it
        assert reported == ["server.state_dir", "queue.path"]
    elif key.startswith("pool."):  # pools are named by name
        assert reported == [f'pool "{config.pools[0].name}".{key.split(".")[1]}']
    else:
        assert reported == [key]


# --- restart_required -------------------------------------------------------------------------


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
