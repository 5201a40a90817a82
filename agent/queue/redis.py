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

Layout: ``job:<id>`` hash per job; ``ready:<pool>`` sorted set of claimable jobs (all scores 0,
members ``<inverted priority>:<seq>:<id>`` so lexical order is priority then FIFO); ``delayed``
(score ``not_before``), ``active`` (score lease expiry) and ``final`` (score finish time) sorted
sets of job ids; ``running`` (score: when it started running) set of job ids, for listing
(a job already running when a gantryd without it was upgraded is missing from it until it
ends); ``deliveries`` (score first seen); ``outbox`` (score = seq) with its data in
``outbox:data``; ``counts`` and ``readycount`` hashes kept by the scripts; ``notify`` list
(at most one element) for ``wait_ready``.

redis-py's asyncio client does not run on trio, so the blocking client runs on one long-lived
thread of the queue's own (see ``RedisQueue``). Time is the injected ``clock``, never Redis
``TIME``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from functools import partial
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
from agent.queue.worker_thread import WorkerThread

T = TypeVar("T")
Clock = Callable[[], float]

_FIELDS = (
    "state", "spec", "attempts", "enqueued_at", "not_before", "updated_at",
    "runner_name", "conclusion", "last_error", "token", "expires",
)  # fmt: skip

# Shared by every script. KEYS[1] is the "{prefix}:" every key starts with.
_LIB = """
local P = KEYS[1]
local FINAL = {done = true, dead = true, cancelled = true}
local FIELDS = {'state', 'spec', 'attempts', 'enqueued_at', 'not_before', 'updated_at',
                'runner_name', 'conclusion', 'last_error', 'token', 'expires'}
local function jkey(id) return P .. 'job:' .. id end
local function count(pool, state, d)
  redis.call('HINCRBY', P .. 'counts', pool .. '\\t' .. state, d)
end
local function move(id, pool, from, to, now)
  count(pool, from, -1); count(pool, to, 1)
  redis.call('HSET', jkey(id), 'state', to, 'updated_at', now)
end
local function notify()
  redis.call('LPUSH', P .. 'notify', '1'); redis.call('LTRIM', P .. 'notify', 0, 0)
end
local function to_ready(id)
  local j = redis.call('HMGET', jkey(id), 'pool', 'priority', 'rkey')
  redis.call('ZADD', P .. 'ready:' .. j[1], 0, j[3])
  redis.call('HINCRBY', P .. 'readycount', j[1] .. '\\t' .. j[2], 1)
end
local function unqueue(id)
  if redis.call('ZREM', P .. 'delayed', id) == 1 then return end
  local j = redis.call('HMGET', jkey(id), 'pool', 'priority', 'rkey')
  if redis.call('ZREM', P .. 'ready:' .. j[1], j[3]) == 1 then
    redis.call('HINCRBY', P .. 'readycount', j[1] .. '\\t' .. j[2], -1)
  end
end
local function place(id, not_before, now)
  if tonumber(not_before) <= tonumber(now) then to_ready(id); notify()
  else redis.call('ZADD', P .. 'delayed', not_before, id) end
end
local function promote(now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now)) do
    redis.call('ZREM', P .. 'delayed', id); to_ready(id)
  end
end
local function outbox(id, state, detail)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('ZADD', P .. 'outbox', seq, id)
  redis.call('HSET', P .. 'outbox:data', id, state .. '\\n' .. detail)
end
local function new_delivery(delivery, now)
  return delivery == '' or redis.call('ZADD', P .. 'deliveries', 'NX', now, delivery) == 1
end
local function leave(id, state, now)
  -- take a non-final job out of whichever index its state puts it in
  if state == 'claimed' then redis.call('ZREM', P .. 'active', id)
  elseif state == 'queued' then unqueue(id)
  elseif state == 'running' then redis.call('ZREM', P .. 'running', id)
  elseif state == 'held' then redis.call('ZREM', P .. 'held', id) end
  redis.call('HDEL', jkey(id), 'token', 'expires')
end
local function finalize(id, pool, state, to, now)
  leave(id, state, now); move(id, pool, state, to, now)
  redis.call('ZADD', P .. 'final', now, id)
end
local function leased(id, token)
  local j = redis.call('HMGET', jkey(id), 'state', 'token', 'pool', 'attempts')
  if j[1] ~= 'claimed' or j[2] ~= token then return nil end
  return j
end
local function fields(id) return redis.call('HMGET', jkey(id), unpack(FIELDS)) end
"""

_ENQUEUE = """
local id, pool, priority, rkey_head, spec, now, not_before, delivery, held = unpack(ARGV)
if not new_delivery(delivery, now) then return 'duplicate_delivery' end
local st = redis.call('HGET', jkey(id), 'state')
if st == 'held' and held ~= '1' then  -- approved: now it may be provisioned
  leave(id, 'held', now)
  move(id, redis.call('HGET', jkey(id), 'pool'), 'held', 'queued', now)
  redis.call('HSET', jkey(id), 'not_before', not_before)
  place(id, not_before, now)
  outbox(id, 'queued', '{}')
  return 'created'
end
if st then if FINAL[st] then return 'finished' end return 'known' end
local state = held == '1' and 'held' or 'queued'
local seq = redis.call('INCR', P .. 'seq')
redis.call('HSET', jkey(id), 'spec', spec, 'state', state, 'pool', pool, 'priority', priority,
  'rkey', rkey_head .. string.format('%020d', seq) .. ':' .. id, 'attempts', 0,
  'enqueued_at', now, 'not_before', not_before, 'updated_at', now)
redis.call('SADD', P .. 'pools', pool)
count(pool, state, 1)
if state == 'queued' then place(id, not_before, now)
else redis.call('ZADD', P .. 'held', now, id) end
outbox(id, state, '{}')
return 'created'
"""

_CLAIM = """
local now, expires, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pools = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or redis.call('SMEMBERS', P .. 'pools')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now)) do
  redis.call('ZREM', P .. 'active', id)
  redis.call('HDEL', jkey(id), 'token', 'expires')
  move(id, redis.call('HGET', jkey(id), 'pool'), 'claimed', 'queued', now)
  to_ready(id)
end
promote(now)
if n <= 0 then return {} end
local heads = {}
for _, pool in ipairs(pools) do
  if redis.call('SISMEMBER', P .. 'paused', pool) == 0 then
    for _, m in ipairs(redis.call('ZRANGE', P .. 'ready:' .. pool, 0, n - 1)) do
      table.insert(heads, {m, pool})
    end
  end
end
table.sort(heads, function(a, b) return a[1] < b[1] end)
local out = {}
for i = 1, math.min(n, #heads) do
  local m, pool = heads[i][1], heads[i][2]
  local id = string.match(m, ':([^:]+)$')
  local token = ARGV[4 + i]
  redis.call('ZREM', P .. 'ready:' .. pool, m)
  local priority = redis.call('HGET', jkey(id), 'priority')
  redis.call('HINCRBY', P .. 'readycount', pool .. '\\t' .. priority, -1)
  move(id, pool, 'queued', 'claimed', now)
  redis.call('HSET', jkey(id), 'token', token, 'expires', expires)
  redis.call('ZADD', P .. 'active', expires, id)
  table.insert(out, fields(id))
end
return out
"""

_HEARTBEAT = """
local id, token, now, expires = unpack(ARGV)
if not leased(id, token) then return false end
redis.call('HSET', jkey(id), 'expires', expires, 'updated_at', now)
redis.call('ZADD', P .. 'active', expires, id)
return fields(id)
"""

_ACK = """
local now, n = ARGV[1], (#ARGV - 1) / 2
local held = {}
for i = 1, n do
  local id, token = ARGV[2 * i], ARGV[2 * i + 1]
  local j = leased(id, token)
  if not j then return {id, token} end
  held[i] = j[3]
end
for i = 1, n do finalize(ARGV[2 * i], held[i], 'claimed', 'done', now) end
return false
"""

_FAIL = """
local id, token, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local j = leased(id, token)
if not j then return false end
local failures = tonumber(j[4]) + 1
local retry_at = ARGV[4 + failures]
redis.call('HSET', jkey(id), 'attempts', failures, 'last_error', reason)
if retry_at == nil then
  finalize(id, j[3], 'claimed', 'dead', now)
  redis.call('HSET', jkey(id), 'conclusion', reason)
  outbox(id, 'dead', cjson.encode({reason = reason}))
  return ''
end
leave(id, 'claimed', now)
move(id, j[3], 'claimed', 'queued', now)
redis.call('HSET', jkey(id), 'not_before', retry_at)
place(id, retry_at, now)
outbox(id, 'queued',
  cjson.encode({reason = reason, attempts = failures, retry_at = tonumber(retry_at)}))
return retry_at
"""

_RELEASE = """
local id, token, now = unpack(ARGV)
local j = leased(id, token)
if not j then return 0 end
leave(id, 'claimed', now)
move(id, j[3], 'claimed', 'queued', now)
to_ready(id); notify()
return 1
"""

_MARK_RUNNING = """
local id, runner, now, delivery = unpack(ARGV)
if not new_delivery(delivery, now) then return 0 end
local j = redis.call('HMGET', jkey(id), 'state', 'pool')
if not j[1] or FINAL[j[1]] then return 0 end
leave(id, j[1], now)
move(id, j[2], j[1], 'running', now)
redis.call('HSET', jkey(id), 'runner_name', runner)
redis.call('ZADD', P .. 'running', now, id)
outbox(id, 'running', cjson.encode({runner_name = runner}))
return 1
"""

_FINISH = """
local id, conclusion, now, delivery, tombstone = unpack(ARGV)
if not new_delivery(delivery, now) then return 0 end
local j = redis.call('HMGET', jkey(id), 'state', 'pool')
if not j[1] then
  redis.call('HSET', jkey(id), 'spec', tombstone, 'state', 'done', 'pool', '', 'priority', 0,
    'attempts', 0, 'enqueued_at', now, 'not_before', now, 'updated_at', now,
    'conclusion', conclusion)
  count('', 'done', 1)
  redis.call('ZADD', P .. 'final', now, id)
  return 1
end
if FINAL[j[1]] then return 0 end
finalize(id, j[2], j[1], 'done', now)
redis.call('HSET', jkey(id), 'conclusion', conclusion)
outbox(id, 'done', cjson.encode({conclusion = conclusion}))
return 1
"""

_CANCEL = """
local id, reason, now = unpack(ARGV)
local j = redis.call('HMGET', jkey(id), 'state', 'pool')
if not j[1] or FINAL[j[1]] then return 0 end
finalize(id, j[2], j[1], 'cancelled', now)
redis.call('HSET', jkey(id), 'conclusion', reason)
outbox(id, 'cancelled', cjson.encode({reason = reason}))
return 1
"""

_RETRY = """
local id, now = unpack(ARGV)
local j = redis.call('HMGET', jkey(id), 'state', 'pool', 'rkey')
if j[1] ~= 'dead' and j[1] ~= 'cancelled' then return 0 end
local seq = redis.call('INCR', P .. 'seq')
redis.call('ZREM', P .. 'final', id)
move(id, j[2], j[1], 'queued', now)
redis.call('HSET', jkey(id), 'attempts', 0, 'not_before', now,
  'rkey', string.match(j[3], '^%d+:') .. string.format('%020d', seq) .. ':' .. id)
redis.call('HDEL', jkey(id), 'conclusion', 'runner_name')
place(id, now, now)
outbox(id, 'queued', '{}')
return 1
"""

# QUEUED/CLAIMED: every candidate's rkey, sorted (= claim order). Others: the running and final
# indexes newest first (final read in chunks until ``limit`` match), then merged by updated_at.
_LIST_JOBS = """
local now, limit, by_pool, only = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
promote(now)
local served, others = {}, {}
local function take(into, ids)
  local n = 0
  for _, id in ipairs(ids) do
    local j = redis.call('HMGET', jkey(id), 'state', 'pool', 'rkey', 'updated_at')
    if want[j[1]] and (not by_pool or j[2] == only) then
      table.insert(into, {id, j[3], tonumber(j[4])}); n = n + 1
    end
  end
  return n
end
if want.queued then
  local pools = by_pool and {only} or redis.call('SMEMBERS', P .. 'pools')
  for _, pool in ipairs(pools) do
    for _, m in ipairs(redis.call('ZRANGE', P .. 'ready:' .. pool, 0, limit - 1)) do
      table.insert(served, {string.match(m, ':([^:]+)$'), m})
    end
  end
  take(served, redis.call('ZRANGE', P .. 'delayed', 0, -1))
end
if want.claimed then take(served, redis.call('ZRANGE', P .. 'active', 0, -1)) end
table.sort(served, function(a, b) return a[2] < b[2] end)
if #served < limit then
  if want.running then take(others, redis.call('ZREVRANGE', P .. 'running', 0, -1)) end
  if want.held then take(others, redis.call('ZREVRANGE', P .. 'held', 0, -1)) end
  if want.done or want.dead or want.cancelled then
    local found, from = 0, 0
    while found < limit do
      local ids = redis.call('ZREVRANGE', P .. 'final', from, from + 255)
      if #ids == 0 then break end
      found = found + take(others, ids); from = from + 256
    end
  end
  table.sort(others, function(a, b) return a[3] > b[3] end)
end
local out = {}
for _, list in ipairs({served, others}) do
  for _, e in ipairs(list) do
    if #out >= limit then return out end
    table.insert(out, fields(e[1]))
  end
end
return out
"""

_RECORD_DELIVERY = """
return new_delivery(ARGV[1], ARGV[2]) and 1 or 0
"""

_POSITION = """
local id, now = unpack(ARGV)
promote(now)
local j = redis.call('HMGET', jkey(id), 'state', 'pool', 'rkey')
if j[1] ~= 'queued' then return false end
return redis.call('ZLEXCOUNT', P .. 'ready:' .. j[2], '-', '(' .. j[3]) + 1
"""

_COUNTS = """
promote(ARGV[1])
return {redis.call('HGETALL', P .. 'counts'), redis.call('HGETALL', P .. 'readycount')}
"""

_RESUME = """
redis.call('SREM', P .. 'paused', ARGV[1])
notify()
"""

_OUTBOX = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'outbox', 0, tonumber(ARGV[1]) - 1)) do
  table.insert(out, {id, redis.call('ZSCORE', P .. 'outbox', id),
    redis.call('HGET', P .. 'outbox:data', id), redis.call('HGET', jkey(id), 'spec')})
end
return out
"""

_ACK_OUTBOX = """
local id, seq = unpack(ARGV)
if redis.call('ZSCORE', P .. 'outbox', id) == seq then
  redis.call('ZREM', P .. 'outbox', id); redis.call('HDEL', P .. 'outbox:data', id)
end
"""

_PRUNE = """
local cutoff, batch = '(' .. ARGV[1], tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'final', '-inf', cutoff, 'LIMIT', 0, batch)
for _, id in ipairs(ids) do
  local j = redis.call('HMGET', jkey(id), 'state', 'pool')
  count(j[2], j[1], -1)
  redis.call('DEL', jkey(id)); redis.call('ZREM', P .. 'final', id)
  redis.call('ZREM', P .. 'outbox', id); redis.call('HDEL', P .. 'outbox:data', id)
end
local d = redis.call('ZRANGEBYSCORE', P .. 'deliveries', '-inf', cutoff, 'LIMIT', 0, batch)
if #d > 0 then redis.call('ZREM', P .. 'deliveries', unpack(d)) end
return {#ids, #d}
"""


def _rkey_head(priority: int) -> str:
    """Fixed-width inverted priority: lexical order of members = higher priority first."""
    return f"{(1 << 62) - priority:020d}:"


def _job(values: Sequence[str | None]) -> QueuedJob:
    d = dict(zip(_FIELDS, values, strict=True))
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
        mapped: Exception = QueueUnavailable(f"Redis unreachable: {exc}")
    elif isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        ("OOM", "READONLY", "LOADING", "MISCONF", "BUSY")
    ):
        mapped = QueueUnavailable(f"Redis refused the write: {exc}")
    else:
        return exc
    mapped.__cause__ = exc
    return mapped


@dataclasses.dataclass(eq=False)
class _Call:
    """One script call, waiting for (or sent in) a shared round trip."""

    name: str
    args: tuple[Any, ...]
    taken: bool = False  # a round trip owns it: it will be sent, whatever happens to its caller
    result: Any = None
    error: BaseException | None = None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


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
        self._flush_lock = trio.Lock()
        self._pending: list[_Call] = []
        self._sources = {
            name: _LIB + body
            for name, body in {
                "enqueue": _ENQUEUE,
                "claim": _CLAIM,
                "heartbeat": _HEARTBEAT,
                "ack": _ACK,
                "fail": _FAIL,
                "release": _RELEASE,
                "mark_running": _MARK_RUNNING,
                "finish": _FINISH,
                "cancel": _CANCEL,
                "retry": _RETRY,
                "list_jobs": _LIST_JOBS,
                "record_delivery": _RECORD_DELIVERY,
                "position": _POSITION,
                "counts": _COUNTS,
                "resume": _RESUME,
                "outbox": _OUTBOX,
                "ack_outbox": _ACK_OUTBOX,
                "prune": _PRUNE,
            }.items()
        }
        self._shas = {
            name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._sources.items()
        }

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
        call = _Call(name, args)
        self._pending.append(call)
        try:
            async with self._flush_lock:
                if not call.taken:  # nobody sent it while we waited: send everything queued
                    batch, self._pending = self._pending, []
                    for c in batch:
                        c.taken = True
                    try:
                        await self._run(partial(self._send_blocking, batch))
                    except trio.ClosedResourceError as exc:  # closed while these waited
                        for c in batch:
                            c.error = exc
                    finally:
                        for c in batch:
                            c.done.set()
        except trio.Cancelled:
            if not call.taken:
                self._pending.remove(call)
                raise
            # Another task's round trip carries it: wait for the outcome, so a caller never
            # mistakes a script that ran for one that did not.
            with trio.CancelScope(shield=True):
                await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _send_blocking(self, batch: list[_Call]) -> None:
        try:
            results = self._evalsha(batch)
            missing = [i for i, r in enumerate(results) if _no_script(r)]
            if missing:  # the server lost its scripts (restart, SCRIPT FLUSH): load, resend
                self._load_scripts()
                for i, result in zip(
                    missing, self._evalsha([batch[i] for i in missing]), strict=True
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
                    conn.execute_command(
                        "EVALSHA", self._shas[call.name], 1, *self._keys, *call.args
                    )
                ]
            except redis.exceptions.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for call in batch:  # types-redis leaves Pipeline.execute_command untyped
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._shas[call.name], 1, *self._keys, *call.args
            )
        return pipe.execute(raise_on_error=False)

    def _load_scripts(self) -> None:
        conn = self._connection()
        for name, src in self._sources.items():
            if conn.execute_command("SCRIPT", "LOAD", src) != self._shas[name]:
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
        batch = [_Call("enqueue", tuple(self._enqueue_args(spec, None, None))) for spec in specs]
        if batch:
            await self._run(partial(self._send_blocking, batch))
        outcomes = []
        for call in batch:
            if call.error is not None:
                raise call.error
            outcomes.append(EnqueueOutcome(call.result))
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
        values = await self._run(partial(self._client.hmget, key, list(_FIELDS)))
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
            async with self._flush_lock:
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
) -> AsyncIterator[RedisQueue]:
    """Connect to ``url``, refuse a server that evicts keys, and close the pool on exit."""
    client = redis.Redis.from_url(url, decode_responses=True)
    queue = RedisQueue(client, prefix=prefix, retry=retry, clock=clock)
    try:
        await queue._run(partial(_check_server, client))
        await queue._run(queue._load_scripts)
        yield queue
    finally:
        await queue.aclose()
