"""Job events reach the host that owns the runner: one Redis stream per host.

Behind a load balancer GitHub's ``in_progress`` / ``completed`` for a job may land on any host.
The receiving host commits the queue change as a single host does (``agent.orchestrator.
webhook``), then ``forward`` routes the event, in one Lua script, to the stream of every host
with a stake in it: the owner of the runner it names (``fleet:runners``) and the hosts with a
runner made for the job or that ran it (``fleet:job:<id>``, see ``agent.fleet.ownership``). The
runner's owner is added to the job's set, so a ``completed`` that comes after the runner is gone
still reaches the host that counts it. An event nobody has a stake in goes to the receiving
host's own stream, where the pool manager ignores it as a single host would (a runner that is not
ours) and the scheduler lets go of a lease it parked for the job.

``follow`` reads this host's stream ``fleet:events:<host>`` through the consumer group
``gantryd`` and hands each event to the pool manager's channel, acknowledging it (``XACK``) once
handed over. Entries sent while the host was down wait in the stream, and entries read but not
acknowledged (a crash between read and hand-over) stay pending and are read first at the next
start: a host restart loses no event. What is lost in a crash is only an event handed over but
not yet applied, which the adoption at the next start makes good (it reads GitHub and Docker).

Streams are capped at ``STREAM_MAX`` entries (approximate ``MAXLEN``): a host gone for longer
than that many events of its own runners finds its runners through adoption instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
import redis.exceptions
import trio

from agent.container.events import JobEvent
from agent.fleet.ownership import JOB_TTL
from agent.fleet.stream_redis import BLOCK_MS, FleetUnavailable, StreamRedis
from agent.queue.base import JobQueue, JobState

log = logging.getLogger(__name__)

GROUP = "gantryd"
STREAM_MAX = 100_000
READ_COUNT = 100
RETRY_BASE = 0.5  # seconds before retrying after Redis was away, doubled up to RETRY_MAX
RETRY_MAX = 10.0

# KEYS[1] = "{prefix}:"; ARGV: job id, runner name ("" if none), receiving host, the event as
# JSON, STREAM_MAX, JOB_TTL. Returns the hosts it was sent to.
_ROUTE = """
local P = KEYS[1]
local job, runner, here, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jobkey = P .. 'fleet:job:' .. job
local targets = {}
local owner = false
if runner ~= '' then owner = redis.call('HGET', P .. 'fleet:runners', runner) end
if owner then
  targets[owner] = true
  redis.call('SADD', jobkey, owner)
  redis.call('EXPIRE', jobkey, ARGV[6])
end
for _, host in ipairs(redis.call('SMEMBERS', jobkey)) do targets[host] = true end
if next(targets) == nil then targets[here] = true end
local sent = {}
for host, _ in pairs(targets) do
  redis.call('XADD', P .. 'fleet:events:' .. host, 'MAXLEN', '~', ARGV[5], '*', 'e', body)
  table.insert(sent, host)
end
return sent
"""


def encode(event: JobEvent) -> str:
    return json.dumps(
        {
            "job_id": event.job_id,
            "action": event.action,
            "runner_name": event.runner_name,
            "conclusion": event.conclusion,
        }
    )


def decode(text: str) -> JobEvent:
    d = json.loads(text)
    return JobEvent(
        job_id=int(d["job_id"]),
        action=d["action"],
        runner_name=d["runner_name"],
        conclusion=d["conclusion"],
    )


class FleetEvents:
    """Routes this host's intake events through Redis and follows this host's own stream."""

    def __init__(self, redis_: StreamRedis, host: str) -> None:
        self._redis = redis_
        self.host = host
        self.stream = redis_.key("events", host)
        self._route = redis_.client.register_script(_ROUTE)
        self.forwarded = 0  # events sent to another host's stream (for tests and metrics)
        self.received = 0  # events handed to this host's pool manager

    async def publish(self, event: JobEvent) -> list[str]:
        """Send ``event`` to the streams of the hosts it concerns; returns their names."""
        args = (
            event.job_id,
            event.runner_name or "",
            self.host,
            encode(event),
            STREAM_MAX,
            JOB_TTL,
        )
        hosts: list[str] = await self._redis.run(
            lambda client: self._route(keys=self._redis.keys, args=args, client=client)
        )
        self.forwarded += sum(1 for h in hosts if h != self.host)
        return hosts

    async def deliver_here(self, event: JobEvent) -> None:
        """Put ``event`` in this host's own stream only (``catch_up``)."""
        body = encode(event)
        await self._redis.run(
            lambda client: client.xadd(
                self.stream, {"e": body}, maxlen=STREAM_MAX, approximate=True
            )
        )

    async def catch_up(self, queue: JobQueue, job_id: int) -> None:
        """This host just recorded a runner made for ``job_id``: hear what happened to the job
        before that record existed. Intake commits a job's change to the queue before routing
        its event, so an event routed before the record is already visible in the queue; an
        event routed after it reaches this host's stream anyway (then it comes twice, which the
        pool manager takes as the duplicate it is)."""
        entry = await queue.get(job_id)
        if entry is None:
            return
        if entry.state is JobState.RUNNING and entry.runner_name:
            await self.deliver_here(
                JobEvent(job_id=job_id, action="in_progress", runner_name=entry.runner_name)
            )
        elif entry.state is JobState.DONE:
            await self.deliver_here(
                JobEvent(
                    job_id=job_id,
                    action="completed",
                    runner_name=entry.runner_name,
                    conclusion=entry.conclusion,
                )
            )

    async def forward(self, events: trio.MemoryReceiveChannel[JobEvent]) -> None:
        """Publish every event intake sends until the channel closes; while Redis is away an
        event is retried with backoff (intake already committed its queue change)."""
        async with events:
            async for event in events:
                delay = RETRY_BASE
                while True:
                    try:
                        hosts = await self.publish(event)
                    except FleetUnavailable as exc:
                        log.warning("fleet: cannot route job %s event: %s", event.job_id, exc)
                        await trio.sleep(delay)  # backoff while Redis is away
                        delay = min(delay * 2, RETRY_MAX)
                        continue
                    log.debug("fleet: job %s %s -> %s", event.job_id, event.action, hosts)
                    break

    async def follow(
        self,
        send: trio.MemorySendChannel[JobEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hand this host's events to ``send`` until cancelled: the pending ones first, then
        new ones as they come; started() once the consumer group exists (or Redis is away,
        which is retried: the daemon serves what it can meanwhile)."""
        started = False
        delay = RETRY_BASE
        async with send:
            while True:
                try:
                    await self._redis.run(self._ensure_group)
                    if not started:
                        started = True
                        task_status.started()
                    await self._drain(send, "0")  # read before, never acknowledged
                    while True:
                        await self._drain(send, ">")
                        delay = RETRY_BASE
                except redis.exceptions.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # The server lost the group (a restart without its append-only file, a
                    # failover to a replica that lacked it): made again at the next pass.
                    log.warning("fleet: event stream %s lost its group: %s", self.stream, exc)
                except FleetUnavailable as exc:
                    log.warning("fleet: event stream %s unreadable: %s", self.stream, exc)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(delay)  # backoff while Redis is away
                    delay = min(delay * 2, RETRY_MAX)

    def _ensure_group(self, client: redis.Redis[str]) -> None:
        try:
            client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _drain(self, send: trio.MemorySendChannel[JobEvent], start: str) -> None:
        """One read of up to READ_COUNT entries (``">"``: blocking); for ``"0"`` (this
        consumer's pending ones) repeated until none is left."""
        block = BLOCK_MS if start == ">" else None
        while True:
            replies: Any = await self._redis.read(
                lambda reader: reader.xreadgroup(
                    GROUP, self.host, {self.stream: start}, count=READ_COUNT, block=block
                )
            )
            entries = replies[0][1] if replies else []
            for entry_id, fields in entries:
                if fields and "e" in fields:  # a pending entry trimmed away reads as empty
                    await send.send(decode(fields["e"]))
                    self.received += 1
                await self._ack(entry_id)
            if start == ">" or not entries:
                return

    async def _ack(self, entry_id: str) -> None:
        await self._redis.run(
            lambda client: client.xack(self.stream, GROUP, entry_id)  # type: ignore[no-untyped-call]
        )
