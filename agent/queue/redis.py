"""The Redis queue backend, for several build servers sharing one queue.

Same semantics as the SQLite backend (one conformance suite runs on both). Every transition is one
Lua script, so it is atomic on the server: two hosts can never claim the same job. All keys live
under one hash tag, ``{prefix}:…``, so they share a cluster slot and scripts may touch any of them.

Server settings this backend needs (checked where possible, documented in docs/queue.md):

- ``maxmemory-policy noeviction`` — an evicted job is a lost job. Checked at open; any other
  policy is refused with ``QueueUnavailable``.
- ``appendonly yes`` with ``appendfsync always`` (a 2xx to GitHub survives power loss, like
  SQLite's ``synchronous=FULL``) or ``everysec`` (up to one second of accepted jobs may be lost on
  power loss or a server crash, like ``synchronous=NORMAL``). RDB snapshots alone lose minutes.

The scripts and the key layout they keep are in ``agent.queue.redis_scripts``.

redis-py's asyncio client does not run on trio, so the blocking client runs on one long-lived
thread of the queue's own (see ``RedisQueue``). Time is the injected ``clock``, never Redis
``TIME``.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
import redis.exceptions
import trio

from agent.queue._codec import dump_spec, load_spec, tombstone_spec
from agent.queue.base import (
    Counts,
    EnqueueOutcome,
    FailOutcome,
    JobSpec,
    JobState,
    Lease,
    OutboxEntry,
    QueuedJob,
    QueueUnavailable,
    RetryPolicy,
    StaleLease,
)
from agent.queue.redis_scripts import FIELDS, SCRIPTS, SHAS
from agent.storage.group_commit import Entry, GroupCommit
from agent.storage.redis_connection import RedisUrlError, redis_client, unreachable
from agent.storage.worker_thread import WorkerThread

T = TypeVar("T")
Clock = Callable[[], float]


def _rkey_head(priority: int) -> str:
    """Fixed-width inverted priority: lexical order of members = higher priority first."""
    return f"{(1 << 62) - priority:020d}:"


def _job(values: Sequence[str | None]) -> QueuedJob:
    d = dict(zip(FIELDS, values, strict=True))
    return QueuedJob(
        spec=load_spec(d["spec"] or ""),
        state=JobState(d["state"] or ""),
        attempts=int(d["attempts"] or 0),
        enqueued_at=float(d["enqueued_at"] or 0),
        not_before=float(d["not_before"] or 0),
        updated_at=float(d["updated_at"] or 0),
        runner_name=d["runner_name"],
        conclusion=d["conclusion"],
        last_error=d["last_error"],
    )


def _lease(values: Sequence[str | None]) -> Lease:
    return Lease(job=_job(values), token=values[9] or "", expires_at=float(values[10] or 0))


def _no_script(result: Any) -> bool:
    return isinstance(result, redis.exceptions.NoScriptError)


def _pairs(flat: Sequence[str]) -> list[tuple[str, int]]:
    return [(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]


def _unavailable(exc: Exception) -> Exception:
    """Translate redis-py's "could not do it" errors; others are bugs and stay as they are."""
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        mapped: Exception = QueueUnavailable(unreachable(exc))
    elif isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        ("OOM", "READONLY", "LOADING", "MISCONF", "BUSY", "NOREPLICAS")
    ):
        mapped = QueueUnavailable(f"Redis refused the write: {exc}")
    else:
        return exc
    mapped.__cause__ = exc
    return mapped


@dataclass(frozen=True)
class _Call:
    """One script call, sent alone or in a shared round trip (``GroupCommit``)."""

    name: str
    args: tuple[Any, ...]


_Sent = Entry[_Call, Any]


class RedisQueue:
    """``JobQueue`` on a Redis server. Create with ``open_redis_queue``.

    Every call runs on one long-lived thread (``WorkerThread``), so there is no thread-cache
    checkout per call, and a lone script call goes over the thread's own connection, so there
    is no connection-pool checkout either. Script calls that arrive while a round trip is in
    flight share the next one (a pipeline of EVALSHAs on a pooled connection, each script
    still atomic on its own), so concurrent tasks are not serialised behind one connection's
    latency. Scripts are loaded at open and again if the server forgot them (a restart):
    EVALSHA never sends the source. ``wait_ready`` parks its BLPOP on a pooled connection.
    """

    def __init__(
        self, client: redis.Redis[str], *, prefix: str, retry: RetryPolicy, clock: Clock
    ) -> None:
        self._client = client
        self._conn: redis.Redis[str] | None = None  # the thread's own, made on the thread
        self._thread: WorkerThread | None = None  # started by the first call
        self._keys = [f"{{{prefix}}}:"]
        self._retry = retry
        self._clock = clock
        self._random = random.Random()
        self._wait_limiter = trio.CapacityLimiter(1)
        self._calls: GroupCommit[_Call, Any] = GroupCommit(self._send, name=f"redis {prefix}")

    def _connection(self) -> redis.Redis[str]:
        """The thread's connection; redis-py reconnects it after a failure on the next call."""
        if self._conn is None:
            self._conn = cast(
                "redis.Redis[str]",
                redis.Redis(
                    connection_pool=self._client.connection_pool, single_connection_client=True
                ),
            )
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the queue's thread, translating "Redis cannot do it" errors."""

        def call() -> T:
            try:
                return fn()
            except redis.exceptions.RedisError as exc:
                if (mapped := _unavailable(exc)) is exc:
                    raise
                raise mapped from exc

        if self._thread is None:
            self._thread = WorkerThread(f"redis {self._keys[0]}")
        return await self._thread.run(call)

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._calls.submit(_Call(name, args))

    async def _send(self, batch: Sequence[_Sent]) -> None:
        await self._run(partial(self._send_blocking, batch))

    def _send_blocking(self, batch: Sequence[_Sent]) -> None:
        try:
            calls = [c.item for c in batch]
            results = self._evalsha(calls)
            missing = [i for i, r in enumerate(results) if _no_script(r)]
            if missing:  # the server lost its scripts (restart, SCRIPT FLUSH): load, resend
                self._load_scripts()
                for i, result in zip(
                    missing, self._evalsha([calls[i] for i in missing]), strict=True
                ):
                    results[i] = result
        except Exception as exc:  # the round trip failed: every call of it did
            for c in batch:
                c.error = _unavailable(exc)
            return
        for c, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                c.error = _unavailable(result)
            else:
                c.result = result

    def _evalsha(self, batch: list[_Call]) -> list[Any]:
        """One round trip; a script's error is returned in its place, not raised."""
        if len(batch) == 1:
            call = batch[0]
            try:
                conn = self._connection()
                return [
                    conn.execute_command("EVALSHA", SHAS[call.name], 1, *self._keys, *call.args)
                ]
            except redis.exceptions.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for call in batch:  # types-redis leaves Pipeline.execute_command untyped
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", SHAS[call.name], 1, *self._keys, *call.args
            )
        return pipe.execute(raise_on_error=False)

    def _load_scripts(self) -> None:
        conn = self._connection()
        for name, src in SCRIPTS.items():
            if conn.execute_command("SCRIPT", "LOAD", src) != SHAS[name]:
                raise QueueUnavailable(f"Redis hashed the {name!r} script differently")

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109 - BLPOP's own timeout
        """Block until some host made work ready since the last wake-up, or ``timeout`` passes
        (False). Idle claimers cost one parked BLPOP; delays are noticed by polling.

        Cancellation returns at once and abandons the BLPOP thread; a wake-up it then pops is
        lost, which costs at most one poll interval (``timeout``) for the next waiter.
        """
        key = f"{self._keys[0]}notify"

        def blpop() -> Any:
            try:
                return self._client.blpop([key], timeout=timeout)
            except redis.exceptions.RedisError as exc:
                if (mapped := _unavailable(exc)) is exc:
                    raise
                raise mapped from exc

        popped = await trio.to_thread.run_sync(
            blpop, limiter=self._wait_limiter, abandon_on_cancel=True
        )
        return popped is not None

    def _enqueue_args(
        self, spec: JobSpec, delivery_id: str | None, not_before: float | None, held: bool = False
    ) -> list[Any]:
        now = self._clock()
        nb = now if not_before is None else not_before
        return [
            spec.job_id, spec.pool, spec.priority, _rkey_head(spec.priority),
            dump_spec(spec), repr(now), repr(nb), delivery_id or "", "1" if held else "0",
        ]  # fmt: skip

    async def enqueue(
        self,
        spec: JobSpec,
        *,
        delivery_id: str | None = None,
        not_before: float | None = None,
        held: bool = False,
    ) -> EnqueueOutcome:
        args = self._enqueue_args(spec, delivery_id, not_before, held)
        result = await self._script("enqueue", *args)
        return EnqueueOutcome(result)

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> list[EnqueueOutcome]:
        """``enqueue`` of each spec in one round trip (each still atomic on its own)."""
        batch: list[_Sent] = [
            Entry(_Call("enqueue", tuple(self._enqueue_args(spec, None, None)))) for spec in specs
        ]
        if batch:
            await self._run(partial(self._send_blocking, batch))
        outcomes = []
        for call in batch:
            if call.error is not None:
                raise call.error
            outcomes.append(EnqueueOutcome(cast(str, call.result)))
        return outcomes

    async def claim(
        self, n: int, *, lease_seconds: float, pools: Sequence[str] | None = None
    ) -> list[Lease]:
        now = self._clock()
        tokens = [secrets.token_hex(16) for _ in range(max(n, 0))]
        rows = await self._script(
            "claim", repr(now), repr(now + lease_seconds), n,
            "" if pools is None else json.dumps(list(pools)), *tokens,
        )  # fmt: skip
        return [_lease(r) for r in rows]

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> Lease:
        now = self._clock()
        row = await self._script(
            "heartbeat", lease.job_id, lease.token, repr(now), repr(now + lease_seconds)
        )
        if row is None:
            raise StaleLease(lease.job_id, lease.token)
        return _lease(row)

    async def ack(self, lease: Lease) -> None:
        await self.ack_many([lease])

    async def ack_many(self, leases: Sequence[Lease]) -> None:
        held = dict.fromkeys((lease.job_id, lease.token) for lease in leases)
        if not held:
            return
        args = [x for pair in held for x in pair]
        stale = await self._script("ack", repr(self._clock()), *args)
        if stale is not None:  # the script checked every lease before acking any
            raise StaleLease(int(stale[0]), stale[1])

    async def fail(self, lease: Lease, reason: str) -> FailOutcome:
        now = self._clock()
        draw = self._random.random()
        retry_ats = []
        for failures in range(1, self._retry.attempts + 1):
            delay = self._retry.backoff(failures, draw)
            assert delay is not None
            retry_ats.append(repr(now + delay))
        result = await self._script(
            "fail", lease.job_id, lease.token, repr(now), reason, *retry_ats
        )
        if result is None:
            raise StaleLease(lease.job_id, lease.token)
        if result == "":
            return FailOutcome(dead=True, retry_at=None)
        return FailOutcome(dead=False, retry_at=float(result))

    async def release(self, lease: Lease) -> None:
        if not await self._script("release", lease.job_id, lease.token, repr(self._clock())):
            raise StaleLease(lease.job_id, lease.token)

    async def mark_running(
        self, job_id: int, runner_name: str, *, delivery_id: str | None = None
    ) -> bool:
        now = repr(self._clock())
        return bool(await self._script("mark_running", job_id, runner_name, now, delivery_id or ""))

    async def finish(self, job_id: int, conclusion: str, *, delivery_id: str | None = None) -> bool:
        now = repr(self._clock())
        tombstone = dump_spec(tombstone_spec(job_id))
        return bool(
            await self._script("finish", job_id, conclusion, now, delivery_id or "", tombstone)
        )

    async def cancel(self, job_id: int, reason: str) -> bool:
        return bool(await self._script("cancel", job_id, reason, repr(self._clock())))

    async def retry(self, job_id: int) -> bool:
        return bool(await self._script("retry", job_id, repr(self._clock())))

    async def record_delivery(self, delivery_id: str) -> bool:
        return bool(await self._script("record_delivery", delivery_id, repr(self._clock())))

    async def get(self, job_id: int) -> QueuedJob | None:
        key = f"{self._keys[0]}job:{job_id}"
        values = await self._run(partial(self._client.hmget, key, list(FIELDS)))
        return None if values[0] is None else _job(values)

    async def position(self, job_id: int) -> int | None:
        result = await self._script("position", job_id, repr(self._clock()))
        return None if result is None else int(result)

    async def list_jobs(
        self, states: Collection[JobState], *, pool: str | None = None, limit: int = 100
    ) -> list[QueuedJob]:
        wanted = [JobState(s).value for s in states]
        if not wanted or limit <= 0:
            return []
        rows = await self._script(
            "list_jobs", repr(self._clock()), limit, int(pool is not None), pool or "", *wanted
        )
        return [_job(row) for row in rows]

    async def counts(self) -> Counts:
        states, ready = await self._script("counts", repr(self._clock()))
        by_pool_state: dict[tuple[str, JobState], int] = {}
        by_state: dict[JobState, int] = {}
        for field, n in _pairs(states):
            if n:
                pool, state = field.rsplit("\t", 1)
                by_pool_state[pool, JobState(state)] = n
                by_state[JobState(state)] = by_state.get(JobState(state), 0) + n
        ready_by: dict[tuple[str, int], int] = {}
        for field, n in _pairs(ready):
            if n:
                pool, priority = field.rsplit("\t", 1)
                ready_by[pool, int(priority)] = n
        return Counts(
            by_state=by_state, by_pool_state=by_pool_state, ready_by_pool_priority=ready_by
        )

    async def pause(self, pool: str) -> None:
        await self._run(partial(self._client.sadd, f"{self._keys[0]}paused", pool))

    async def resume(self, pool: str) -> None:
        await self._script("resume", pool)

    async def outbox(self, limit: int) -> list[OutboxEntry]:
        rows = await self._script("outbox", limit) if limit > 0 else []
        entries = []
        for job_id, seq, data, spec in rows:
            state, detail = data.split("\n", 1)
            entries.append(
                OutboxEntry(
                    job_id=int(job_id),
                    seq=int(seq),
                    state=JobState(state),
                    spec=load_spec(spec),
                    detail=json.loads(detail),
                )
            )
        return entries

    async def ack_outbox(self, job_id: int, seq: int) -> None:
        await self._script("ack_outbox", job_id, seq)

    async def prune(self, *, older_than: float, batch: int = 500) -> int:
        """Delete in scripts of at most ``batch`` jobs so the server never stalls long."""
        total = 0
        while True:
            jobs, deliveries = await self._script("prune", repr(older_than), batch)
            total += int(jobs) + int(deliveries)
            if jobs < batch and deliveries < batch:
                return total

    async def aclose(self) -> None:
        """Close the connections once the calls in flight have finished."""
        with trio.CancelScope(shield=True):
            await self._calls.aclose()  # the round trip in flight has finished
            if self._thread is not None:
                await self._thread.aclose()
            if self._conn is not None:
                self._conn.close()  # hands the connection back to the pool; no I/O
            async with self._wait_limiter:
                await trio.to_thread.run_sync(self._client.close)


def _check_server(client: redis.Redis[str]) -> None:
    info = client.info("memory")
    policy = info.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        raise QueueUnavailable(
            f"Redis maxmemory-policy is {policy!r}: the server may evict queued jobs. "
            "Set `maxmemory-policy noeviction` in redis.conf (see docs/queue.md)"
        )


@asynccontextmanager
async def open_redis_queue(
    url: str,
    *,
    prefix: str = "gantryd",
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing the default is safe
    clock: Clock = time.time,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    sentinel_password_file: Path | None = None,
) -> AsyncIterator[RedisQueue]:
    """Connect to ``url`` (any form ``agent.storage.redis_connection`` takes), refuse a server
    that evicts keys, and close the pool on exit."""
    try:
        client = redis_client(
            url,
            password_file=password_file,
            ca_file=ca_file,
            sentinel_password_file=sentinel_password_file,
        )
    except RedisUrlError as exc:
        raise QueueUnavailable(f"cannot use redis_url {exc}") from exc
    queue = RedisQueue(client, prefix=prefix, retry=retry, clock=clock)
    try:
        await queue._run(partial(_check_server, client))
        await queue._run(queue._load_scripts)
        yield queue
    finally:
        await queue.aclose()
