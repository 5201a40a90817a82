"""Check runs for a fleet: their ids in Redis, and one host at a time reporting a job.

Every host's reporter drains the one shared outbox (the Redis queue's). Two rules keep it to
one check run per job and attempt (a GitHub job id is one attempt of a job: a re-run gets a new
id), whichever host reports:

- **One host at a time per job** (``take``): a host reports an outbox entry only while it holds
  the job's turn, ``fleet:report-turn:<id>`` (``SET NX PX``, token-checked release). Another
  host that finds it held skips the entry; it stays in the outbox.
- **Never an older state after a newer one**: the turn is refused when the job's record says an
  entry of this or a later ``seq`` was already delivered (``reported``, written before the
  outbox entry is acknowledged). A host that read the outbox before another host reported and
  acknowledged the job then finds "done", acknowledges its copy (a no-op) and sends nothing.

The record ``fleet:checkrun:<id>`` (hash: ``check_run_id``, ``creating``, ``started_at``,
``seq``) replaces the host-local ``reporter.db`` of a single host, with the same crash rule
(``creating`` is set before the create is sent; a host that finds it set and no id looks the
check run up by ``external_id``). Once the final state is delivered (``forget``) the record is
kept for ``KEEP_FINAL`` so that a stale entry still finds its ``seq``.

A turn lasts ``TURN_TTL`` and the holder renews it every third of that while its report is
under way (a slow GitHub with the client's retries keeps it); a holder that cannot renew it
abandons the report. A host that dies holding a turn delays that job's report by at most
``TURN_TTL``. A host stalled (not dead) past the turn, in the middle of sending a creation, could
still send it after the next holder's lookup found nothing: the one case left where two check
runs could be made.
"""

from __future__ import annotations

import enum
import secrets

import redis

from agent.fleet.stream_redis import StreamRedis
from agent.github.report_store import Reported
from agent.queue.base import OutboxEntry

TURN_TTL = 15.0  # seconds a turn lasts unless renewed
KEEP_FINAL = 24 * 3600  # seconds a delivered final record is kept

# KEYS[1] = "{prefix}:"; ARGV: job id, entry seq, token, TTL ms.
_TAKE = """
local rec = KEYS[1] .. 'fleet:checkrun:' .. ARGV[1]
local done = tonumber(redis.call('HGET', rec, 'seq') or '-1')
if done >= tonumber(ARGV[2]) then return 'done' end
if redis.call('SET', KEYS[1] .. 'fleet:report-turn:' .. ARGV[1], ARGV[3], 'NX', 'PX', ARGV[4])
then return 'mine' end
return 'busy'
"""

# KEYS[1] = "{prefix}:"; ARGV: job id, token.
_GIVE_BACK = """
local turn = KEYS[1] .. 'fleet:report-turn:' .. ARGV[1]
if redis.call('GET', turn) == ARGV[2] then redis.call('DEL', turn) end
return 0
"""

# KEYS[1] = "{prefix}:"; ARGV: job id, token, TTL ms. Returns 1 if renewed.
_KEEP = """
local turn = KEYS[1] .. 'fleet:report-turn:' .. ARGV[1]
if redis.call('GET', turn) == ARGV[2] then redis.call('PEXPIRE', turn, ARGV[3]); return 1 end
return 0
"""

# KEYS[1] = "{prefix}:"; ARGV: job id, seq.
_REPORTED = """
local rec = KEYS[1] .. 'fleet:checkrun:' .. ARGV[1]
local done = tonumber(redis.call('HGET', rec, 'seq') or '-1')
if tonumber(ARGV[2]) > done then redis.call('HSET', rec, 'seq', ARGV[2]) end
return 0
"""


class Verdict(enum.StrEnum):
    MINE = "mine"  # report it, then ``give_back``
    BUSY = "busy"  # another host is reporting the job: skip the entry for now
    DONE = "done"  # this or a newer state was delivered: acknowledge the entry, send nothing


class FleetReports:
    """The check-run records of the fleet (the ``ReportStore`` methods) and reporting turns."""

    def __init__(self, redis_: StreamRedis, *, turn_ttl: float = TURN_TTL) -> None:
        self._redis = redis_
        self._turn_ms = int(turn_ttl * 1000)
        self.renew_every = turn_ttl / 3
        self._keep = redis_.client.register_script(_KEEP)
        self._take = redis_.client.register_script(_TAKE)
        self._give_back = redis_.client.register_script(_GIVE_BACK)
        self._reported = redis_.client.register_script(_REPORTED)

    def _record(self, job_id: int) -> str:
        return self._redis.key("checkrun", job_id)

    # -- turns ---------------------------------------------------------------------------

    async def take(self, entry: OutboxEntry) -> tuple[Verdict, str]:
        """Whether this host reports ``entry`` now, and the token to give the turn back with."""
        token = secrets.token_hex(8)
        args = (entry.job_id, entry.seq, token, self._turn_ms)
        verdict = Verdict(
            await self._redis.run(lambda c: self._take(keys=self._redis.keys, args=args, client=c))
        )
        return verdict, token if verdict is Verdict.MINE else ""

    async def reported(self, entry: OutboxEntry) -> None:
        """The entry was delivered to GitHub: no host sends it (or an older one) again."""
        args = (entry.job_id, entry.seq)
        await self._redis.run(lambda c: self._reported(keys=self._redis.keys, args=args, client=c))

    async def keep(self, job_id: int, token: str) -> bool:
        """Extend the turn by ``turn_ttl``; False when it is not this holder's any more."""
        args = (job_id, token, self._turn_ms)
        kept = await self._redis.run(
            lambda c: self._keep(keys=self._redis.keys, args=args, client=c)
        )
        return bool(kept)

    async def give_back(self, job_id: int, token: str) -> None:
        args = (job_id, token)
        await self._redis.run(lambda c: self._give_back(keys=self._redis.keys, args=args, client=c))

    # -- the ReportStore methods ---------------------------------------------------------

    async def get(self, job_id: int) -> Reported | None:
        key = self._record(job_id)
        values = await self._redis.run(
            lambda c: c.hmget(key, ["check_run_id", "creating", "started_at", "seq", "final"])
        )
        check_run_id, creating, started_at, _, _ = values
        if all(v is None for v in (check_run_id, creating, started_at)):
            return None
        return Reported(
            check_run_id=int(check_run_id) if check_run_id else None,
            creating=creating == "1",
            started_at=float(started_at) if started_at else None,
        )

    async def mark_creating(self, job_id: int) -> None:
        key = self._record(job_id)
        await self._redis.run(lambda c: c.hset(key, "creating", "1"))

    async def set_check_run(self, job_id: int, check_run_id: int) -> None:
        key = self._record(job_id)
        mapping: dict[str | bytes, bytes | float | int | str] = {
            "check_run_id": check_run_id,
            "creating": "0",
        }
        await self._redis.run(lambda c: c.hset(key, mapping=mapping))

    async def set_started(self, job_id: int, started_at: float) -> None:
        """The first time the job was seen running (later calls change nothing)."""
        key = self._record(job_id)
        await self._redis.run(lambda c: c.hsetnx(key, "started_at", repr(started_at)))

    async def forget(self, job_id: int) -> None:
        """The final report was delivered: the record expires after ``KEEP_FINAL``."""
        key = self._record(job_id)

        def write(c: redis.Redis[str]) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.hset(key, "final", "1")
            pipe.expire(key, KEEP_FINAL)
            pipe.execute()

        await self._redis.run(write)
