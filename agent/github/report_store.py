"""What the reporter must remember across a crash: which check run belongs to which job.

A check run is created once per job and then updated (PATCH) by its id, so the id has to
survive ``kill -9``: otherwise a restart would create a second check run for the job. The
store also marks a creation *before* it is sent: if gantryd dies after GitHub created the check
run but before its id was written here, the mark tells the next run to look the check run up
(by its ``external_id``) instead of creating another. And it keeps when the job started
running, for the duration in the final report.

This is host-local state (docs/design.md §5): a small SQLite file through ``agent.db``, beside the
queue, whatever the queue backend is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from agent.db import Database, open_database


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.table("check_runs").create(
        {"job_id": int, "check_run_id": int, "creating": int, "started_at": float},
        pk="job_id",
        not_null={"creating"},
    )


MIGRATIONS = (_schema_v1,)


@dataclass(frozen=True, kw_only=True)
class Reported:
    check_run_id: int | None  # None until GitHub answered the creation
    creating: bool  # a creation was sent and its answer may have been lost
    started_at: float | None  # unix seconds the job was first reported running


class ReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, job_id: int) -> Reported | None:
        def q(conn: sqlite3.Connection) -> Reported | None:
            row = conn.execute(
                "SELECT check_run_id, creating, started_at FROM check_runs WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            return Reported(check_run_id=row[0], creating=bool(row[1]), started_at=row[2])

        return await self._db.read(q)

    async def mark_creating(self, job_id: int) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO check_runs (job_id, creating) VALUES (?, 1) "
                "ON CONFLICT (job_id) DO UPDATE SET creating = 1",
                (job_id,),
            )
        )

    async def set_check_run(self, job_id: int, check_run_id: int) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO check_runs (job_id, check_run_id, creating) VALUES (?, ?, 0) "
                "ON CONFLICT (job_id) DO UPDATE SET check_run_id = excluded.check_run_id, "
                "creating = 0",
                (job_id, check_run_id),
            )
        )

    async def set_started(self, job_id: int, started_at: float) -> None:
        """Remember the first time the job was seen running (later calls change nothing)."""
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO check_runs (job_id, creating, started_at) VALUES (?, 0, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET started_at = "
                "coalesce(check_runs.started_at, excluded.started_at)",
                (job_id, started_at),
            )
        )

    async def forget(self, job_id: int) -> None:
        """The job's final report was delivered: nothing more will be sent for it."""
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM check_runs WHERE job_id = ?", (job_id,))
        )


@asynccontextmanager
async def open_report_store(path: Path, *, synchronous: str = "full") -> AsyncIterator[ReportStore]:
    async with open_database(path, migrations=MIGRATIONS, synchronous=synchronous) as db:
        yield ReportStore(db)
