"""agent/container/store.py against a real SQLite file: usage rows and their pruning."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.container.lifecycle import Runner
from agent.container.store import MIGRATIONS, STATE_FILE, open_runner_store
from agent.db import open_database
from agent.github.client import RunnerTarget
from tests.queue.queue_support import FakeClock


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
