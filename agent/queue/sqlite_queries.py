"""The SQLite backend's read-only queries: a job, its place in line, listings, counts, outbox.

Kept apart from the transitions in ``agent.queue.sqlite`` because they never take the writer:
each is a function of a read connection that ``SQLiteQueue`` runs with ``Database.read``, so
what the status, metrics and reporter see is one module and what changes a job is another.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.queue._codec import load_spec
from agent.queue.base import Counts, JobState, OutboxEntry, QueuedJob
from agent.queue.sqlite_schema import COLUMNS, job_from_row


def job(conn: sqlite3.Connection, job_id: int) -> QueuedJob | None:
    """The job's row, in any state."""
    row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
    found = row.fetchone()
    return None if found is None else job_from_row(found)


def position(conn: sqlite3.Connection, job_id: int, now: float) -> int | None:
    """1 for the next job of its pool to be claimed; None unless it is queued."""
    row = conn.execute(
        "SELECT pool, priority, seq FROM jobs WHERE job_id = ? AND state = 'queued'",
        (job_id,),
    ).fetchone()
    if row is None:
        return None
    pool, priority, seq = row
    ahead = conn.execute(
        "SELECT count(*) FROM jobs WHERE state = 'queued' AND pool = ? "
        "AND (priority > ? OR (priority = ? AND seq < ?)) AND not_before <= ?",
        (pool, priority, priority, seq, now),
    ).fetchone()[0]
    return int(ahead) + 1


def list_jobs(
    conn: sqlite3.Connection, states: Sequence[JobState], pool: str | None, limit: int
) -> list[QueuedJob]:
    """Jobs in ``states`` (non-empty): waiting ones in claim order first, then newest first."""
    wanted = [state.value for state in states]
    sql = (
        f"SELECT {COLUMNS} FROM jobs WHERE state IN ({', '.join('?' * len(wanted))}) "
        + ("AND pool = ? " if pool is not None else "")
        + "ORDER BY state IN ('queued', 'claimed') DESC, "
        "CASE WHEN state IN ('queued', 'claimed') THEN -priority END, "
        "CASE WHEN state IN ('queued', 'claimed') THEN seq END, "
        "updated_at DESC, job_id DESC LIMIT ?"
    )
    args: list[Any] = [*wanted, *([pool] if pool is not None else []), limit]
    return [job_from_row(row) for row in conn.execute(sql, args)]


def counts(conn: sqlite3.Connection, now: float) -> Counts:
    """From ``job_counts`` (kept by triggers) less the few delayed rows: no backlog scan."""
    by_pool_state: dict[tuple[str, JobState], int] = {}
    by_state: dict[JobState, int] = {}
    ready: dict[tuple[str, int], int] = {}
    for pool, state_name, priority, n in conn.execute(
        "SELECT pool, state, priority, n FROM job_counts WHERE n > 0"
    ):
        state = JobState(state_name)
        by_pool_state[pool, state] = by_pool_state.get((pool, state), 0) + n
        by_state[state] = by_state.get(state, 0) + n
        if state is JobState.QUEUED:
            ready[pool, priority] = n
    for pool, priority, n in conn.execute(
        "SELECT pool, priority, count(*) FROM jobs INDEXED BY jobs_delayed "
        "WHERE state = 'queued' "
        "AND not_before > enqueued_at AND not_before > ? GROUP BY pool, priority",
        (now,),
    ):
        ready[pool, priority] -= n
    return Counts(
        by_state=by_state,
        by_pool_state=by_pool_state,
        ready_by_pool_priority={k: v for k, v in ready.items() if v > 0},
    )


def outbox(conn: sqlite3.Connection, limit: int) -> list[OutboxEntry]:
    """The oldest ``limit`` outbox rows, each with its job's spec."""
    rows = conn.execute(
        "SELECT o.job_id, o.seq, o.state, o.detail, j.spec FROM outbox o "
        "JOIN jobs j USING (job_id) ORDER BY o.seq LIMIT ?",
        (limit,),
    )
    return [
        OutboxEntry(
            job_id=job_id,
            seq=seq,
            state=JobState(state),
            spec=load_spec(spec),
            detail=json.loads(detail),
        )
        for job_id, seq, state, detail, spec in rows
    ]
