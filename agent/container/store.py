"""The local state database: this host's runners, so a restarted gantryd can adopt them.

Whatever the queue backend, what belongs to this host alone lives here (docs/design.md §5): one row
per runner that has not been removed yet (written before its GitHub registration, so a crash never
leaves a registration gantryd cannot name), and the resources each served job used, for the
reporter. SQLite through ``agent.db`` (one writer, ``synchronous=FULL``: losing a runner's row
would let garbage collection remove a container whose job is still running).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.container.lifecycle import Runner, RunnerState
from agent.db import Database, Migration, open_database
from agent.github.client import RunnerTarget

STATE_FILE = "runners.db"  # its own file: other local stores keep their own schema versions


def _v1(db: sqlite_utils.Database) -> None:
    db.table("runners").create(
        {
            "name": str,
            "pool": str,
            "repository": str,  # registration target (repository scope)
            "organization": str,  # registration target (organization scope)
            "installation_id": int,
            "labels": str,  # JSON array
            "created_at": float,
            "memory": int,
            "state": str,
            "state_since": float,
            "runner_id": int,
            "container_id": str,
            "made_for": int,
            "assigned_at": float,
            "job_repository": str,
            "lease_token": str,
            "lease_expires": float,
            "running_job": int,
            "reason": str,
            "image_digest": str,
        },
        pk="name",
    )
    db.table("job_usage").create(
        {
            "job_id": int,
            "runner": str,
            "pool": str,
            "peak_memory": int,
            "cpu_seconds": float,
            "oom_killed": int,
            "reason": str,
            "image_digest": str,
            "recorded_at": float,
        },
        pk="job_id",
    )


def _v2(db: sqlite_utils.Database) -> None:
    """``timed_out`` was a word in ``reason`` (which an OOM then overwrote): a column now."""
    db.table("runners").add_column("timed_out", int)
    db.execute("UPDATE runners SET timed_out = (reason LIKE '%job_timeout%')")


def _v3(db: sqlite_utils.Database) -> None:
    """An index for ``prune_usage``, which runs every reconcile pass."""
    db.table("job_usage").create_index(["recorded_at"])


def _v4(db: sqlite_utils.Database) -> None:
    """``docker = "dind"`` runners: a sidecar and volumes named after the runner go with it."""
    db.table("runners").add_column("sidecar", int)
    db.table("runners").add_column("sidecar_id", str)


MIGRATIONS: tuple[Migration, ...] = (_v1, _v2, _v3, _v4)


@dataclass(frozen=True, kw_only=True)
class StoredRunner:
    """A runner row, with its lease as stored (rebuilt against the queue on adoption)."""

    runner: Runner
    lease_token: str | None
    lease_expires: float | None


@dataclass(frozen=True, kw_only=True)
class JobUsage:
    """What one job's runner used: for the reporter's check run."""

    job_id: int
    runner: str
    pool: str
    peak_memory: int
    cpu_seconds: float
    oom_killed: bool
    reason: str | None
    image_digest: str | None


def _row(runner: Runner) -> dict[str, Any]:
    return {
        "name": runner.name,
        "pool": runner.pool,
        "repository": runner.target.repository,
        "organization": runner.target.organization,
        "installation_id": runner.installation_id,
        "labels": json.dumps(list(runner.labels)),
        "created_at": runner.created_at,
        "memory": runner.memory,
        "state": runner.state.value,
        "state_since": runner.state_since,
        "runner_id": runner.runner_id,
        "container_id": runner.container_id,
        "made_for": runner.made_for,
        "assigned_at": runner.assigned_at,
        "job_repository": runner.repository,
        "lease_token": runner.lease.token if runner.lease else None,
        "lease_expires": runner.lease.expires_at if runner.lease else None,
        "running_job": runner.running_job,
        "reason": runner.reason,
        "image_digest": runner.image_digest,
        "timed_out": int(runner.timed_out),
        "sidecar": int(runner.sidecar),
        "sidecar_id": runner.sidecar_id,
    }


def _runner(row: sqlite3.Row) -> StoredRunner:
    runner = Runner(
        name=row["name"],
        pool=row["pool"],
        target=RunnerTarget(repository=row["repository"], organization=row["organization"]),
        installation_id=row["installation_id"],
        labels=tuple(json.loads(row["labels"])),
        created_at=row["created_at"],
        memory=row["memory"] or 0,
        state=RunnerState(row["state"]),
        state_since=row["state_since"],
        runner_id=row["runner_id"],
        container_id=row["container_id"],
        made_for=row["made_for"],
        assigned_at=row["assigned_at"],
        repository=row["job_repository"],
        running_job=row["running_job"],
        reason=row["reason"],
        image_digest=row["image_digest"],
        timed_out=bool(row["timed_out"]),
        sidecar=bool(row["sidecar"]),
        sidecar_id=row["sidecar_id"],
    )
    return StoredRunner(
        runner=runner, lease_token=row["lease_token"], lease_expires=row["lease_expires"]
    )


class RunnerStore:
    """Runner rows and job usage in ``<state_dir>/runners.db``. Every method commits."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock  # stamps usage rows; the reconciler prunes them on its own clock

    async def save(self, runner: Runner) -> None:
        row = _row(runner)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        sql = f"INSERT OR REPLACE INTO runners ({columns}) VALUES ({marks})"
        await self._db.write(lambda conn: conn.execute(sql, tuple(row.values())))

    async def delete(self, name: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM runners WHERE name = ?", (name,))
        )

    async def load(self) -> list[StoredRunner]:
        def read(conn: sqlite3.Connection) -> list[StoredRunner]:
            conn.row_factory = sqlite3.Row
            try:
                rows = conn.execute("SELECT * FROM runners ORDER BY created_at").fetchall()
            finally:
                conn.row_factory = None
            return [_runner(row) for row in rows]

        return await self._db.read(read)

    async def record_usage(self, runner: Runner, job_id: int) -> None:
        values = (
            job_id,
            runner.name,
            runner.pool,
            runner.peak_memory,
            runner.cpu_seconds,
            int(runner.oom_killed),
            runner.reason,
            runner.image_digest,
            self._clock(),
        )
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO job_usage (job_id, runner, pool, peak_memory, "
                "cpu_seconds, oom_killed, reason, image_digest, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        )

    async def usage(self, job_id: int) -> JobUsage | None:
        def read(conn: sqlite3.Connection) -> JobUsage | None:
            row = conn.execute(
                "SELECT runner, pool, peak_memory, cpu_seconds, oom_killed, reason, image_digest"
                " FROM job_usage WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            return JobUsage(
                job_id=job_id,
                runner=row[0],
                pool=row[1],
                peak_memory=row[2],
                cpu_seconds=row[3],
                oom_killed=bool(row[4]),
                reason=row[5],
                image_digest=row[6],
            )

        return await self._db.read(read)

    async def prune_usage(self, *, older_than: float, batch: int = 500) -> int:
        """Delete the usage rows recorded before ``older_than`` (the queue's retention), in
        transactions of at most ``batch`` rows so other writers never wait long."""

        def delete(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM job_usage WHERE job_id IN "
                "(SELECT job_id FROM job_usage WHERE recorded_at < ? LIMIT ?)",
                (older_than, batch),
            )
            return cursor.rowcount

        total = 0
        while True:
            deleted = await self._db.write(delete)
            total += deleted
            if deleted < batch:
                return total


@asynccontextmanager
async def open_runner_store(
    state_dir: Path, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[RunnerStore]:
    """Open (creating) ``<state_dir>/runners.db``; closed when the block exits."""
    async with open_database(Path(state_dir) / STATE_FILE, migrations=MIGRATIONS) as db:
        yield RunnerStore(db, clock=clock)
