"""agent/container/store.py against a real SQLite file: a runner's row holds every fact adoption
needs, across upgrades; usage rows and their pruning."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

from agent.container.lifecycle import Runner, RunnerState
from agent.container.store import MIGRATIONS, STATE_FILE, open_runner_store
from agent.db import open_database
from agent.github.client import RunnerTarget
from tests.queue.queue_support import FakeClock


def busy_runner() -> Runner:
    runner = Runner(
        name="gantryd-h-1",
        pool="default",
        target=RunnerTarget(repository="octo-org/app"),
        installation_id=1001,
        labels=("self-hosted", "linux"),
        created_at=10.0,
        memory=128,
        container_id="c1",
        runner_id=7,
    )
    runner.assign(42, None, repository="octo-org/app", now=11.0)
    runner.move(RunnerState.STARTING, now=12.0)
    runner.start_job(42, now=13.0)
    return runner


async def test_a_timed_out_runner_stays_timed_out_after_a_restart(tmp_path: Path) -> None:
    runner = busy_runner()
    runner.timed_out = True  # stopped once: a restarted gantryd must not stop it again
    runner.reason = "out of memory (the pool's memory limit was reached)"
    runner.mark_exited(14.0)  # not stored: adoption asks Docker again
    async with open_runner_store(tmp_path) as store:
        await store.save(runner)
    async with open_runner_store(tmp_path) as store:
        (loaded,) = await store.load()
    back = loaded.runner
    assert back.timed_out and back.reason == runner.reason
    assert (back.state, back.running_job, back.made_for) == (RunnerState.BUSY, 42, 42)
    assert back.exited_at is None and not back.retiring


async def test_rows_written_before_the_timed_out_column_keep_what_their_reason_said(
    tmp_path: Path,
) -> None:
    async with open_database(tmp_path / STATE_FILE, migrations=MIGRATIONS[:1]) as db:
        for name, reason in (("h-1", "job exceeded job_timeout (60s): timed_out"), ("h-2", None)):
            await db.write(partial(_insert_busy, name=name, reason=reason))
    async with open_runner_store(tmp_path) as store:
        loaded = {row.runner.name: row.runner for row in await store.load()}
    assert loaded["h-1"].timed_out and not loaded["h-2"].timed_out
    assert loaded["h-1"].state is RunnerState.BUSY


def _insert_busy(conn: sqlite3.Connection, *, name: str, reason: str | None) -> None:
    """A busy runner row as a schema-v1 gantryd wrote it."""
    conn.execute(
        "INSERT INTO runners (name, pool, repository, labels, created_at, state,"
        " state_since, reason) VALUES (?, 'default', 'octo-org/app', '[]', 1.0, 'busy', 2.0, ?)",
        (name, reason),
    )


def runner(name: str) -> Runner:
    return Runner(
        name=name,
        pool="default",
        target=RunnerTarget(repository="octo-org/app"),
        installation_id=None,
        labels=("self-hosted", "linux"),
        created_at=0.0,
        peak_memory=64 << 20,
        cpu_seconds=1.5,
    )


async def test_prune_usage_deletes_only_rows_older_than_the_cutoff(tmp_path: Path) -> None:
    clock = FakeClock()
    async with open_runner_store(tmp_path, clock=clock) as store:
        for job_id in range(1, 6):  # more than one batch of 2
            await store.record_usage(runner(f"old-{job_id}"), job_id)
        clock.advance(100)
        await store.record_usage(runner("recent"), 6)
        assert await store.prune_usage(older_than=clock() - 50, batch=2) == 5
        assert [await store.usage(job_id) for job_id in range(1, 6)] == [None] * 5
        kept = await store.usage(6)
        assert kept is not None
        assert (kept.runner, kept.peak_memory, kept.cpu_seconds) == ("recent", 64 << 20, 1.5)
        assert await store.prune_usage(older_than=clock() - 50) == 0


async def test_a_store_of_the_first_schema_gains_the_pruning_index(tmp_path: Path) -> None:
    async with open_database(tmp_path / STATE_FILE, migrations=MIGRATIONS[:1]):
        pass
    async with open_runner_store(tmp_path) as store:
        await store.record_usage(runner("r"), 1)
    conn = sqlite3.connect(tmp_path / STATE_FILE)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT job_id FROM job_usage WHERE recorded_at < 1"
        ).fetchall()
    finally:
        conn.close()
    assert "INDEX idx_job_usage_recorded_at" in " ".join(row[-1] for row in plan)
