"""What only the SQLite backend has: its schema migrations and the counts its triggers keep."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.db import open_database
from agent.queue._codec import dump_spec
from agent.queue.base import JobSpec, JobState
from agent.queue.sqlite import open_sqlite_queue
from agent.queue.sqlite_schema import MIGRATIONS


def spec(job_id: int, pool: str) -> str:
    return dump_spec(
        JobSpec(
            job_id=job_id,
            run_id=1,
            run_attempt=1,
            repository="o/r",
            installation_id=1,
            labels=("self-hosted",),
            pool=pool,
        )
    )


async def test_version_1_file_is_migrated_keeping_delivery_ids(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with open_database(path, migrations=MIGRATIONS[:1]) as db:
        await db.write(lambda c: c.execute("INSERT INTO deliveries VALUES ('d-old', 1000.0)"))
    async with open_sqlite_queue(path) as queue:
        assert not await queue.record_delivery("d-old")  # still known after the migration
        assert await queue.record_delivery("d-new")
        assert await queue.prune(older_than=2000.0) == 1  # the seen_at index is back
        assert await queue.record_delivery("d-old")
    async with open_database(path, migrations=MIGRATIONS) as db:
        sql = await db.read(
            lambda c: c.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'deliveries'"
            ).fetchone()[0]
        )
        indexes = await db.read(
            lambda c: c.execute(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'deliveries' AND type = 'index'"
            ).fetchall()
        )
    assert sql.endswith("WITHOUT ROWID")
    assert ("deliveries_seen_at",) in indexes


def group_by_counts(c: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    return c.execute(
        "SELECT pool, state, priority, count(*) FROM jobs GROUP BY pool, state, priority "
        "ORDER BY 1, 2, 3"
    ).fetchall()


def kept_counts(c: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    return c.execute(
        "SELECT pool, state, priority, n FROM job_counts WHERE n > 0 ORDER BY 1, 2, 3"
    ).fetchall()


async def test_version_2_file_gets_job_counts_that_triggers_then_keep(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with open_database(path, migrations=MIGRATIONS[:2]) as db:
        await db.write(
            lambda c: c.executemany(
                "INSERT INTO jobs (job_id, seq, pool, priority, state, spec, attempts, "
                "enqueued_at, not_before, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, 1.0, 1.0, 1.0)",
                [
                    (1, 1, "a", 0, "queued", spec(1, "a")),
                    (2, 2, "a", 1, "queued", spec(2, "a")),
                    (3, 3, "b", 0, "done", spec(3, "b")),
                ],
            )
        )
    async with open_sqlite_queue(path) as queue:
        counts = await queue.counts()
        assert counts.ready_by_pool_priority == {("a", 0): 1, ("a", 1): 1}
        assert counts.by_pool_state == {("a", JobState.QUEUED): 2, ("b", JobState.DONE): 1}
        [lease] = await queue.claim(1, lease_seconds=60, pools=["a"])
        assert lease.job_id == 2  # higher priority first, from the pool-led index
        await queue.fail(lease, "boom")  # back to QUEUED with a backoff: not ready
        await queue.pause("a")
        assert await queue.claim(5, lease_seconds=60) == []
        await queue.resume("a")
        assert (await queue.counts()).ready_by_pool_priority == {("a", 0): 1}
        assert await queue.finish(1, "success")
        await queue.prune(older_than=1e12)
    async with open_database(path, migrations=MIGRATIONS) as db:
        assert await db.read(kept_counts) == await db.read(group_by_counts)
