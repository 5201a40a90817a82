"""The SQLite (WAL) queue backend: the default, embedded, durable on ``synchronous=FULL``.

Every transition is one ``BEGIN IMMEDIATE`` transaction on the single writer connection of
``agent.db`` (state change, delivery id and outbox row together, or nothing). Claims take, for
each wanted pool that has QUEUED rows and is not paused (``job_counts`` says which), the head of
that pool's part of the partial ready index (``pool, priority DESC, seq``), merged, with one
``UPDATE … WHERE job_id IN (…) RETURNING …``: the cost of a claim does not grow with the
backlog, and a claim that can find nothing is answered from a read without taking the writer.
Time comes from the injected ``clock`` (unix seconds) so tests drive lease expiry and delays.
The tables and the row helpers shared by the transactions are in ``agent.queue.sqlite_schema``;
the read-only queries (a job, its position, listings, counts, the outbox) in
``agent.queue.sqlite_queries``.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from agent.db import Database, open_database
from agent.queue import sqlite_queries as queries
from agent.queue._codec import dump_spec, tombstone_spec
from agent.queue.base import (
    FINAL_STATES,
    Counts,
    EnqueueOutcome,
    FailOutcome,
    JobSpec,
    JobState,
    Lease,
    OutboxEntry,
    QueuedJob,
    RetryPolicy,
    StaleLease,
)
from agent.queue.sqlite_schema import (
    COLUMNS,
    FINAL_SQL,
    MIGRATIONS,
    check_lease,
    claim_may_find,
    job_from_row,
    new_delivery,
    next_seq,
    put_outbox,
    queued_pools,
    state_of,
)

Clock = Callable[[], float]


class SQLiteQueue:
    """``JobQueue`` on a SQLite file. Create with ``open_sqlite_queue``."""

    def __init__(self, db: Database, *, retry: RetryPolicy, clock: Clock) -> None:
        self._db = db
        self._retry = retry
        self._clock = clock
        self._random = random.Random()
        self._ready = trio.Event()

    def _wake(self) -> None:
        self._ready.set()

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109 - shared with Redis
        """Wait until this process made work ready (enqueue, release, fail, resume) since the
        last call, or ``timeout`` seconds pass (False): other hosts and delays are polled."""
        with trio.move_on_after(timeout):
            await self._ready.wait()
            self._ready = trio.Event()
            return True
        return False

    async def enqueue(
        self,
        spec: JobSpec,
        *,
        delivery_id: str | None = None,
        not_before: float | None = None,
        held: bool = False,
    ) -> EnqueueOutcome:
        outcome = await self._db.write(self._enqueue_tx(spec, delivery_id, not_before, held))
        if outcome is EnqueueOutcome.CREATED:
            self._wake()
        return outcome

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[EnqueueOutcome]:
        """``enqueue`` of each spec, in one transaction (one fsync): reconciler sweeps, backlogs."""
        txs = [self._enqueue_tx(spec, None, None) for spec in specs]
        outcomes = await self._db.write(lambda conn: [tx(conn) for tx in txs])
        if EnqueueOutcome.CREATED in outcomes:
            self._wake()
        return outcomes

    def _enqueue_tx(
        self, spec: JobSpec, delivery_id: str | None, not_before: float | None, held: bool = False
    ) -> Callable[[sqlite3.Connection], EnqueueOutcome]:
        now = self._clock()
        state = JobState.HELD if held else JobState.QUEUED

        def tx(conn: sqlite3.Connection) -> EnqueueOutcome:
            if not new_delivery(conn, delivery_id, now):
                return EnqueueOutcome.DUPLICATE_DELIVERY
            seq = next_seq(conn)
            cur = conn.execute(
                "INSERT INTO jobs (job_id, seq, pool, priority, state, spec, attempts, "
                "enqueued_at, not_before, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?) "
                "ON CONFLICT (job_id) DO NOTHING",
                (
                    spec.job_id,
                    seq,
                    spec.pool,
                    spec.priority,
                    state.value,
                    dump_spec(spec),
                    now,
                    now if not_before is None else not_before,
                    now,
                ),
            )
            if cur.rowcount == 0:
                known = state_of(conn, spec.job_id)
                if known is JobState.HELD and not held:  # approved: now it may be provisioned
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', not_before = ?, updated_at = ? "
                        "WHERE job_id = ?",
                        (now if not_before is None else not_before, now, spec.job_id),
                    )
                    put_outbox(conn, spec.job_id, JobState.QUEUED, {})
                    return EnqueueOutcome.CREATED
                return EnqueueOutcome.FINISHED if known in FINAL_STATES else EnqueueOutcome.KNOWN
            put_outbox(conn, spec.job_id, state, {}, seq)
            return EnqueueOutcome.CREATED

        return tx

    async def claim(
        self, n: int, *, lease_seconds: float, pools: Sequence[str] | None = None
    ) -> list[Lease]:
        now = self._clock()
        if n > 0 and not await self._db.read(lambda conn: claim_may_find(conn, pools, now)):
            return []  # nothing queued in these pools and no lease to expire: no write at all

        def tx(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            conn.execute(
                "UPDATE jobs SET state = 'queued', lease_token = NULL, lease_expires = NULL, "
                "updated_at = ? WHERE state = 'claimed' AND lease_expires <= ?",
                (now, now),
            )
            wanted = queued_pools(conn, pools) if n > 0 else []
            if not wanted:
                return []
            # One head per pool, each read from that pool's part of the ready index, merged.
            head = (
                "SELECT * FROM (SELECT job_id, priority, seq FROM jobs WHERE state = 'queued' "
                "AND pool = ? AND not_before <= ? ORDER BY priority DESC, seq LIMIT ?)"
            )
            sql = (
                "UPDATE jobs SET state = 'claimed', lease_token = lower(hex(randomblob(16))), "
                "lease_expires = ?, updated_at = ? WHERE job_id IN (SELECT job_id FROM ("
                + " UNION ALL ".join([head] * len(wanted))
                + f") ORDER BY priority DESC, seq LIMIT ?) RETURNING {COLUMNS}, priority, seq"
            )
            args: list[Any] = [now + lease_seconds, now]
            for pool in wanted:
                args.extend((pool, now, n))
            args.append(n)
            return [tuple(r) for r in conn.execute(sql, args)]

        rows = await self._db.write(tx)
        rows.sort(key=lambda r: (-r[12], r[13]))
        return [Lease(job=job_from_row(r), token=r[10], expires_at=r[11]) for r in rows]

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> Lease:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> Lease:
            check_lease(conn, lease)
            row = conn.execute(
                f"UPDATE jobs SET lease_expires = ?, updated_at = ? WHERE job_id = ? "
                f"RETURNING {COLUMNS}",
                (now + lease_seconds, now, lease.job_id),
            ).fetchone()
            return Lease(job=job_from_row(row), token=lease.token, expires_at=row[11])

        return await self._db.write(tx)

    async def ack(self, lease: Lease) -> None:
        await self.ack_many([lease])

    async def ack_many(self, leases: Sequence[Lease]) -> None:
        held = list(dict.fromkeys((lease.job_id, lease.token) for lease in leases))
        if not held:
            return
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> None:
            for job_id, token in held:  # the lease check is the UPDATE's own WHERE
                done = conn.execute(
                    "UPDATE jobs SET state = 'done', lease_token = NULL, lease_expires = NULL, "
                    "updated_at = ? WHERE job_id = ? AND state = 'claimed' AND lease_token = ?",
                    (now, job_id, token),
                )
                if done.rowcount != 1:
                    raise StaleLease(job_id, token)  # rolls back the acks made before it

        await self._db.write(tx)

    async def fail(self, lease: Lease, reason: str) -> FailOutcome:
        now = self._clock()
        draw = self._random.random()

        def tx(conn: sqlite3.Connection) -> FailOutcome:
            row = check_lease(conn, lease)
            failures = row[3] + 1
            delay = self._retry.backoff(failures, draw)
            if delay is None:
                conn.execute(
                    "UPDATE jobs SET state = 'dead', attempts = ?, last_error = ?, "
                    "conclusion = ?, lease_token = NULL, lease_expires = NULL, updated_at = ? "
                    "WHERE job_id = ?",
                    (failures, reason, reason, now, lease.job_id),
                )
                put_outbox(conn, lease.job_id, JobState.DEAD, {"reason": reason})
                return FailOutcome(dead=True, retry_at=None)
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = ?, last_error = ?, not_before = ?, "
                "lease_token = NULL, lease_expires = NULL, updated_at = ? WHERE job_id = ?",
                (failures, reason, now + delay, now, lease.job_id),
            )
            put_outbox(
                conn,
                lease.job_id,
                JobState.QUEUED,
                {"reason": reason, "attempts": failures, "retry_at": now + delay},
            )
            return FailOutcome(dead=False, retry_at=now + delay)

        outcome = await self._db.write(tx)
        if not outcome.dead:
            self._wake()
        return outcome

    async def release(self, lease: Lease) -> None:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> None:
            check_lease(conn, lease)
            conn.execute(
                "UPDATE jobs SET state = 'queued', lease_token = NULL, lease_expires = NULL, "
                "updated_at = ? WHERE job_id = ?",
                (now, lease.job_id),
            )

        await self._db.write(tx)
        self._wake()

    async def mark_running(
        self, job_id: int, runner_name: str, *, delivery_id: str | None = None
    ) -> bool:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> bool:
            if not new_delivery(conn, delivery_id, now):
                return False
            state = state_of(conn, job_id)
            if state is None or state in FINAL_STATES:
                return False
            conn.execute(
                "UPDATE jobs SET state = 'running', runner_name = ?, lease_token = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE job_id = ?",
                (runner_name, now, job_id),
            )
            put_outbox(conn, job_id, JobState.RUNNING, {"runner_name": runner_name})
            return True

        return await self._db.write(tx)

    async def finish(self, job_id: int, conclusion: str, *, delivery_id: str | None = None) -> bool:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> bool:
            if not new_delivery(conn, delivery_id, now):
                return False
            state = state_of(conn, job_id)
            if state is None:
                conn.execute(
                    "INSERT INTO jobs (job_id, seq, pool, priority, state, spec, attempts, "
                    "enqueued_at, not_before, updated_at, conclusion) "
                    "VALUES (?, ?, '', 0, 'done', ?, 0, ?, ?, ?, ?)",
                    (
                        job_id,
                        next_seq(conn),
                        dump_spec(tombstone_spec(job_id)),
                        now,
                        now,
                        now,
                        conclusion,
                    ),
                )
                return True
            if state in FINAL_STATES:
                return False
            conn.execute(
                "UPDATE jobs SET state = 'done', conclusion = ?, lease_token = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE job_id = ?",
                (conclusion, now, job_id),
            )
            put_outbox(conn, job_id, JobState.DONE, {"conclusion": conclusion})
            return True

        return await self._db.write(tx)

    async def cancel(self, job_id: int, reason: str) -> bool:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> bool:
            state = state_of(conn, job_id)
            if state is None or state in FINAL_STATES:
                return False
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', conclusion = ?, lease_token = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE job_id = ?",
                (reason, now, job_id),
            )
            put_outbox(conn, job_id, JobState.CANCELLED, {"reason": reason})
            return True

        return await self._db.write(tx)

    async def retry(self, job_id: int) -> bool:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', seq = ?, attempts = 0, not_before = ?, "
                "updated_at = ?, conclusion = NULL, runner_name = NULL, lease_token = NULL, "
                "lease_expires = NULL WHERE job_id = ? AND state IN ('dead', 'cancelled')",
                (next_seq(conn), now, now, job_id),
            )
            if cur.rowcount == 0:
                return False
            put_outbox(conn, job_id, JobState.QUEUED, {})
            return True

        retried = await self._db.write(tx)
        if retried:
            self._wake()
        return retried

    async def record_delivery(self, delivery_id: str) -> bool:
        now = self._clock()
        return await self._db.write(lambda conn: new_delivery(conn, delivery_id, now))

    async def get(self, job_id: int) -> QueuedJob | None:
        return await self._db.read(lambda conn: queries.job(conn, job_id))

    async def position(self, job_id: int) -> int | None:
        now = self._clock()
        return await self._db.read(lambda conn: queries.position(conn, job_id, now))

    async def list_jobs(
        self, states: Collection[JobState], *, pool: str | None = None, limit: int = 100
    ) -> list[QueuedJob]:
        wanted = [JobState(s) for s in states]
        if not wanted or limit <= 0:
            return []
        return await self._db.read(lambda conn: queries.list_jobs(conn, wanted, pool, limit))

    async def counts(self) -> Counts:
        """From ``job_counts`` (kept by triggers) less the few delayed rows: no backlog scan."""
        now = self._clock()
        return await self._db.read(lambda conn: queries.counts(conn, now))

    async def pause(self, pool: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("INSERT OR IGNORE INTO paused (pool) VALUES (?)", (pool,))
        )

    async def resume(self, pool: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM paused WHERE pool = ?", (pool,))
        )
        self._wake()

    async def outbox(self, limit: int) -> list[OutboxEntry]:
        return await self._db.read(lambda conn: queries.outbox(conn, limit))

    async def ack_outbox(self, job_id: int, seq: int) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "DELETE FROM outbox WHERE job_id = ? AND seq = ?", (job_id, seq)
            )
        )

    async def prune(self, *, older_than: float, batch: int = 500) -> int:
        """Delete in transactions of at most ``batch`` rows so writers never wait long."""

        def jobs_tx(conn: sqlite3.Connection) -> int:
            ids = [
                (r[0],)
                for r in conn.execute(
                    f"SELECT job_id FROM jobs WHERE state IN {FINAL_SQL} AND updated_at < ? "
                    "LIMIT ?",
                    (older_than, batch),
                )
            ]
            conn.executemany("DELETE FROM outbox WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", ids)
            return len(ids)

        def deliveries_tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM deliveries WHERE delivery_id IN (SELECT delivery_id FROM "
                "deliveries WHERE seen_at < ? LIMIT ?)",
                (older_than, batch),
            ).rowcount

        total = 0
        for tx in (jobs_tx, deliveries_tx):
            while True:
                deleted = await self._db.write(tx)
                total += deleted
                if deleted < batch:
                    break
        return total

    async def aclose(self) -> None:
        await self._db.aclose()


@asynccontextmanager
async def open_sqlite_queue(
    path: Path | str,
    *,
    synchronous: str = "full",
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing the default is safe
    clock: Clock = time.time,
) -> AsyncIterator[SQLiteQueue]:
    """Open (creating or migrating) the queue database at ``path``; close it on exit."""
    async with open_database(Path(path), migrations=MIGRATIONS, synchronous=synchronous) as db:
        yield SQLiteQueue(db, retry=retry, clock=clock)
