"""The SQLite queue's tables, their migrations, and the row helpers its transactions share.

``agent.queue.sqlite`` runs the transitions; this module is what they agree on about the file:
the ``jobs`` table (one row per GitHub job id, ``seq`` for FIFO among equal priorities), the
delivery ids, the outbox (one pending report per job, latest state wins) and the partial
indexes each hot query reads. ``MIGRATIONS`` is applied by ``agent.db.migrate``: append a step,
never edit one that has shipped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from agent.queue._codec import load_spec
from agent.queue.base import JobState, Lease, QueuedJob, StaleLease

COLUMNS = (
    "job_id, state, spec, attempts, enqueued_at, not_before, updated_at, "
    "runner_name, conclusion, last_error, lease_token, lease_expires"
)
FINAL_SQL = "('done', 'dead', 'cancelled')"


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.table("jobs").create(
        {
            "job_id": int,
            "seq": int,  # enqueue order: FIFO among equal priorities
            "pool": str,
            "priority": int,
            "state": str,
            "spec": str,  # JobSpec as JSON
            "attempts": int,
            "enqueued_at": float,
            "not_before": float,
            "updated_at": float,
            "lease_token": str,
            "lease_expires": float,
            "runner_name": str,
            "conclusion": str,
            "last_error": str,
        },
        pk="job_id",
        not_null={"seq", "pool", "priority", "state", "spec", "attempts", "enqueued_at"},
    )
    db.table("deliveries").create({"delivery_id": str, "seen_at": float}, pk="delivery_id")
    db.table("deliveries").create_index(["seen_at"])
    db.table("outbox").create(
        {"job_id": int, "seq": int, "state": str, "detail": str},
        pk="job_id",
        not_null={"seq", "state", "detail"},
    )
    db.table("outbox").create_index(["seq"])
    db.table("paused").create({"pool": str}, pk="pool")
    db.table("counters").create({"name": str, "value": int}, pk="name")
    db.table("counters").insert({"name": "seq", "value": 0})
    # Partial indexes: each hot query reads only the rows of its state.
    db.execute("CREATE INDEX jobs_ready ON jobs (priority DESC, seq) WHERE state = 'queued'")
    db.execute("CREATE INDEX jobs_leased ON jobs (lease_expires) WHERE state = 'claimed'")
    db.execute(f"CREATE INDEX jobs_final ON jobs (updated_at) WHERE state IN {FINAL_SQL}")


def _schema_v2(db: sqlite_utils.Database) -> None:
    """Delivery ids WITHOUT ROWID: one b-tree instead of a rowid table plus its key index, so
    an enqueue writes one page fewer per commit (docs/benchmarks.md, "Queue")."""
    db.execute(
        "CREATE TABLE deliveries_v2 (delivery_id TEXT PRIMARY KEY, seen_at FLOAT) WITHOUT ROWID"
    )
    db.execute("INSERT INTO deliveries_v2 SELECT delivery_id, seen_at FROM deliveries")
    db.execute("DROP TABLE deliveries")
    db.execute("ALTER TABLE deliveries_v2 RENAME TO deliveries")
    db.execute("CREATE INDEX deliveries_seen_at ON deliveries (seen_at)")


def _schema_v3(db: sqlite_utils.Database) -> None:
    """Backlog-flat (issue 16): the ready index leads with the pool, so a claim for one pool
    reads only that pool's rows (a paused or empty pool's claim no longer scans the backlog);
    ``job_counts`` holds the rows per (pool, state, priority), kept by triggers in the same
    transaction as every change to ``jobs``, so ``counts`` reads a few rows instead of two
    ``GROUP BY`` scans; ``jobs_delayed`` indexes only QUEUED rows whose ``not_before`` was moved
    past their enqueue (backoff, delayed enqueue, retry), the ones ``counts`` must not call
    ready, so it is empty and costs an enqueue nothing in the common case."""
    db.execute("DROP INDEX jobs_ready")
    db.execute("CREATE INDEX jobs_ready ON jobs (pool, priority DESC, seq) WHERE state = 'queued'")
    db.execute(
        "CREATE INDEX jobs_delayed ON jobs (not_before) "
        "WHERE state = 'queued' AND not_before > enqueued_at"
    )
    db.execute(
        "CREATE TABLE job_counts (pool TEXT NOT NULL, state TEXT NOT NULL, "
        "priority INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (pool, state, priority)) "
        "WITHOUT ROWID"
    )
    rebuild_job_counts(db.conn)
    add = (
        "INSERT INTO job_counts (pool, state, priority, n) "
        "VALUES (new.pool, new.state, new.priority, 1) "
        "ON CONFLICT (pool, state, priority) DO UPDATE SET n = n + 1;"
    )
    remove = (
        "UPDATE job_counts SET n = n - 1 "
        "WHERE pool = old.pool AND state = old.state AND priority = old.priority;"
    )
    db.execute(f"CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN {add} END")
    db.execute(f"CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN {remove} END")
    db.execute(
        "CREATE TRIGGER jobs_counted_update AFTER UPDATE OF pool, state, priority ON jobs "
        "WHEN old.pool IS NOT new.pool OR old.state IS NOT new.state "
        f"OR old.priority IS NOT new.priority BEGIN {remove} {add} END"
    )


MIGRATIONS = (_schema_v1, _schema_v2, _schema_v3)


def rebuild_job_counts(conn: sqlite3.Connection) -> None:
    """``job_counts`` recomputed from ``jobs``: at the v3 migration, and wherever rows reach
    ``jobs`` without the triggers (a recovered copy of a damaged file)."""
    conn.execute("DELETE FROM job_counts")
    conn.execute(
        "INSERT INTO job_counts (pool, state, priority, n) "
        "SELECT pool, state, priority, count(*) FROM jobs GROUP BY pool, state, priority"
    )


def job_from_row(row: sqlite3.Row | tuple[Any, ...]) -> QueuedJob:
    return QueuedJob(
        spec=load_spec(row[2]),
        state=JobState(row[1]),
        attempts=row[3],
        enqueued_at=row[4],
        not_before=row[5],
        updated_at=row[6],
        runner_name=row[7],
        conclusion=row[8],
        last_error=row[9],
    )


def next_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value")
    return int(row.fetchone()[0])


def put_outbox(
    conn: sqlite3.Connection,
    job_id: int,
    state: JobState,
    detail: dict[str, Any],
    seq: int | None = None,
) -> None:
    """Upsert the job's pending report: the latest state wins, under a new ``seq``."""
    conn.execute(
        "INSERT INTO outbox (job_id, seq, state, detail) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET "
        "seq = excluded.seq, state = excluded.state, detail = excluded.detail",
        (job_id, seq or next_seq(conn), state.value, json.dumps(detail)),
    )


def new_delivery(conn: sqlite3.Connection, delivery_id: str | None, now: float) -> bool:
    if delivery_id is None:
        return True
    cur = conn.execute(
        "INSERT OR IGNORE INTO deliveries (delivery_id, seen_at) VALUES (?, ?)", (delivery_id, now)
    )
    return cur.rowcount == 1


def state_of(conn: sqlite3.Connection, job_id: int) -> JobState | None:
    row = conn.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return None if row is None else JobState(row[0])


def check_lease(conn: sqlite3.Connection, lease: Lease) -> tuple[Any, ...]:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM jobs WHERE job_id = ? AND state = 'claimed' AND lease_token = ?",
        (lease.job_id, lease.token),
    ).fetchone()
    if row is None:
        raise StaleLease(lease.job_id, lease.token)
    return tuple(row)


def restore_counters(conn: sqlite3.Connection) -> None:
    """After ``gantryd queue recover``: the ``seq`` counter is ahead of every kept row even if
    its own page was lost, so new jobs and reports still sort after the old ones; and
    ``job_counts`` agrees with the kept rows."""
    conn.execute("INSERT OR IGNORE INTO counters (name, value) VALUES ('seq', 0)")
    conn.execute(
        "UPDATE counters SET value = max(value, (SELECT coalesce(max(seq), 0) FROM jobs), "
        "(SELECT coalesce(max(seq), 0) FROM outbox)) WHERE name = 'seq'"
    )
    rebuild_job_counts(conn)  # the rows were copied in without the triggers that keep them


def queued_pools(conn: sqlite3.Connection, pools: Sequence[str] | None) -> list[str]:
    """The pools (of ``pools``, or all) with QUEUED rows that are not paused, by ``job_counts``."""
    rows = conn.execute(
        "SELECT DISTINCT pool FROM job_counts WHERE state = 'queued' AND n > 0 "
        "AND pool NOT IN (SELECT pool FROM paused) ORDER BY pool"
    )
    found = [r[0] for r in rows]
    return found if pools is None else [p for p in found if p in set(pools)]


def claim_may_find(conn: sqlite3.Connection, pools: Sequence[str] | None, now: float) -> bool:
    """Whether a claim has anything to do: a wanted pool with QUEUED rows, or a lease expired
    (its job goes back to QUEUED inside the claim)."""
    if queued_pools(conn, pools):
        return True
    expired = conn.execute(
        "SELECT 1 FROM jobs WHERE state = 'claimed' AND lease_expires <= ? LIMIT 1", (now,)
    ).fetchone()
    return expired is not None
