"""The admin interface: JSON over HTTP on a unix socket (``<runtime_dir>/admin.sock``, mode 0660).

Only local users in gantryd's group can reach it: the socket file's mode is the access control,
so there is no token to leak. ``gantryd status|jobs|drain|resume|gc|secrets`` are its clients
(``agent.ops.commands`` through ``agent.ops.admin_client``); every answer is a message of
``agent.ops.protocol``. Endpoints::

    GET    /status                  pools, runners (state, job, age, CPU, memory), queue
    GET    /jobs?state=&pool=&limit=  queue entries: waiting ones in serving order, then newest
    GET    /jobs/{id}               one queue entry, its position and runner
    POST   /jobs/{id}/cancel        cancel a job that has not finished
    POST   /jobs/{id}/retry         queue a dead or cancelled job again
    POST   /drain, /resume          stop / restart taking new jobs (running ones go on)
    POST   /gc                      one garbage-collection pass; names of what it removed
    GET    /secrets                 names and dates, never values
    PUT    /secrets/{name}          body = the value
    DELETE /secrets/{name}
    POST   /secrets/rotate-key
    GET    /secrets/audit?secret=&limit=
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import hypercorn.config
import hypercorn.trio
import trio

from agent import __version__
from agent.container.lifecycle import LIVE_STATES, Runner
from agent.fleet.hosts import Hosts
from agent.fleet.leases import holders
from agent.ops.protocol import (
    JOBS_SHOWN,
    MAX_JOBS_SHOWN,
    AdminError,
    Answer,
    Collected,
    ConfigState,
    Draining,
    ErrorAnswer,
    FleetHost,
    FleetPool,
    FleetStatus,
    JobCancelled,
    JobDetail,
    JobInfo,
    JobList,
    JobRetried,
    PoolStatus,
    QueueStatus,
    Resumed,
    RunnerStatus,
    SecretsAnswer,
    Status,
    encode,
    socket_path,
)
from agent.ops.secrets_api import answer_secrets
from agent.ops.usage import UsageTracker
from agent.orchestrator.listener import ListenerStatus
from agent.queue.base import JobQueue, JobState, QueuedJob, QueueError
from agent.reload import LiveConfig
from agent.secrets import SecretsError, SecretStore

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
MAX_BODY = 128 * 1024
WAITING_SHOWN = 200  # queue rows in /status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Pausable(Protocol):
    paused: bool

    async def set_drained(self, drained: bool) -> None: ...


class RunnerSource(Protocol):
    def runners(self) -> list[Runner]: ...

    def pool_notes(self, pool: str) -> tuple[str, ...]: ...


def job_info(job: QueuedJob, position: int | None = None) -> JobInfo:
    spec = job.spec
    return JobInfo(
        id=spec.job_id,
        repository=spec.repository,
        pool=spec.pool,
        priority=spec.priority,
        name=spec.name,
        workflow=spec.workflow_name,
        state=job.state,
        attempts=job.attempts,
        enqueued_at=job.enqueued_at,
        not_before=job.not_before,
        runner=job.runner_name,
        conclusion=job.conclusion,
        last_error=job.last_error,
        position=position,
    )


@dataclass
class AdminApp:
    """ASGI app of the admin socket; the services it reads are the daemon's own objects."""

    live: LiveConfig
    queue: JobQueue
    scheduler: Pausable
    pools: RunnerSource
    instance: str
    usage: UsageTracker
    secrets: SecretStore | None = None
    gc: Callable[[], Awaitable[list[str]]] | None = None  # one GC pass: what it removed
    started_at: float = 0.0
    listeners: Mapping[str, ListenerStatus] = field(default_factory=dict)  # by pool
    hosts: Hosts | None = None  # the fleet's host records (Redis backend only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        answer: Answer
        try:
            body = await _read_body(receive)
            status, answer = 200, await self._route(scope["method"], scope["path"], query, body)
        except AdminError as exc:
            status, answer = exc.status, ErrorAnswer(error=str(exc))
        except SecretsError as exc:
            status, answer = 400, ErrorAnswer(error=str(exc))
        except QueueError as exc:
            status, answer = 503, ErrorAnswer(error=f"queue unavailable: {exc}")
        data = json.dumps(encode(answer)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> Answer:
        """The answer to one request; the paths are those ``agent.ops.protocol``'s requests use."""
        parts = [p for p in path.split("/") if p]
        match method, parts:
            case "GET", ["status"]:
                return await self.status()
            case "GET", ["fleet"]:
                if self.hosts is None:
                    return FleetStatus(instance=self.instance, backend="sqlite", hosts=())
                return await fleet_status(self.hosts, self.instance)
            case "GET", ["jobs"]:
                return await self.jobs(query)
            case "GET", ["jobs", job]:
                return await self.job(_job_id(job))
            case "POST", ["jobs", job, "cancel"]:
                return await self.cancel(_job_id(job))
            case "POST", ["jobs", job, "retry"]:
                return await self.retry(_job_id(job))
            case "POST", ["drain"]:
                await self.scheduler.set_drained(True)
                log.info("drain: taking no new jobs until `gantryd resume`")
                return Draining(paused=True, runners=self._live_runners())
            case "POST", ["resume"]:
                await self.scheduler.set_drained(False)
                log.info("resume: taking new jobs again")
                return Resumed(paused=False)
            case "POST", ["gc"]:
                if self.gc is None:
                    raise AdminError(501, "garbage collection is not available in this build")
                return Collected(removed=tuple(await self.gc()))
            case _, ["secrets", *rest]:
                return await self._secrets(method, rest, query, body)
        raise AdminError(404, f"no such admin endpoint: {method} {path}")

    # -- status ---------------------------------------------------------------------------

    def _live_runners(self) -> int:
        return sum(1 for r in self.pools.runners() if r.state in LIVE_STATES)

    def _runner_status(self, runner: Runner, now: float) -> RunnerStatus:
        load = self.usage.load.get(runner.container_id or "")
        return RunnerStatus(
            name=runner.name,
            pool=runner.pool,
            state=runner.state,
            job=runner.running_job or runner.made_for,
            repository=runner.target.repository or runner.target.organization,
            age=round(now - runner.created_at, 1),
            in_state=round(now - runner.state_since, 1),
            cpu=None if load is None else round(load.cpu, 3),
            memory=None if load is None else load.memory,
        )

    async def status(self) -> Status:
        now = time.time()
        config = self.live.current
        counts = await self.queue.counts()
        runners = self.pools.runners()
        pools = []
        for pool in config.pools:
            mine = [r for r in runners if r.pool == pool.name]
            pools.append(
                PoolStatus(
                    name=pool.name,
                    labels=tuple(pool.labels),
                    max_runners=pool.max_runners,
                    runners={
                        s: sum(1 for r in mine if r.state is s)
                        for s in sorted({r.state for r in mine})
                    },
                    queue={
                        state: n
                        for (p, state), n in counts.by_pool_state.items()
                        if p == pool.name and n
                    },
                    notes=self.pools.pool_notes(pool.name),
                    listener=_listener_text(self.listeners.get(pool.name)),
                )
            )
        return Status(
            version=__version__,
            instance=self.instance,
            uptime=round(now - self.started_at, 1) if self.started_at else None,
            paused=self.scheduler.paused,
            config=ConfigState(
                path=str(config.path),
                last_reload_ok=self.live.last_reload_ok,
                last_reload_at=self.live.last_reload_at,
                max_runners=config.scheduler.max_runners,
                restart_pending=self.live.restart_pending,
            ),
            pools=tuple(pools),
            runners=tuple(self._runner_status(r, now) for r in runners),
            queue=QueueStatus(
                by_state=dict(counts.by_state),
                jobs=await self._waiting_jobs(),
            ),
        )

    async def _waiting_jobs(self) -> tuple[JobInfo, ...]:
        """Jobs not yet running, in serving order, with their position; then those held for an
        environment approval."""
        states = [JobState.QUEUED, JobState.CLAIMED, JobState.HELD]
        jobs = await self.queue.list_jobs(states, limit=WAITING_SHOWN)
        return _with_positions(jobs, time.time())

    # -- jobs -----------------------------------------------------------------------------

    async def jobs(self, query: dict[str, str]) -> JobList:
        states = _states(query.get("state", ""))
        limit = _limit(query.get("limit", ""))
        listed = await self.queue.list_jobs(states, pool=query.get("pool") or None, limit=limit)
        return JobList(complete=len(listed) < limit, jobs=_with_positions(listed, time.time()))

    async def job(self, job_id: int) -> JobDetail:
        job = await self.queue.get(job_id)
        if job is None:
            raise AdminError(404, f"job {job_id} is not in the queue")
        info = job_info(job, await self.queue.position(job_id))
        held = [r.name for r in self.pools.runners() if job_id in (r.made_for, r.running_job)]
        return JobDetail(**vars(info), runners=tuple(held))

    async def cancel(self, job_id: int) -> JobCancelled:
        if not await self.queue.cancel(job_id, "cancelled by an operator (gantryd jobs cancel)"):
            job = await self.queue.get(job_id)
            state = "not in the queue" if job is None else f"already {job.state.value}"
            raise AdminError(409, f"job {job_id} cannot be cancelled: {state}")
        log.info("job %s cancelled by an operator", job_id)
        return JobCancelled(cancelled=job_id)

    async def retry(self, job_id: int) -> JobRetried:
        job = await self.queue.get(job_id)
        if job is None:
            raise AdminError(404, f"job {job_id} is not in the queue")
        if job.state not in (JobState.DEAD, JobState.CANCELLED):
            raise AdminError(
                409,
                f"job {job_id} is {job.state.value}; only dead or cancelled jobs can be retried",
            )
        if not await self.queue.retry(job_id):
            raise AdminError(409, f"job {job_id} changed meanwhile; look again")
        log.info("job %s queued again by an operator", job_id)
        return JobRetried(retried=job_id)

    # -- secrets --------------------------------------------------------------------------

    async def _secrets(
        self, method: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> SecretsAnswer:
        if self.secrets is None:
            raise AdminError(503, "the secrets store is not open")
        return await answer_secrets(self.secrets, method, rest, query, body, actor="admin socket")


async def fleet_status(hosts: Hosts, instance: str) -> FleetStatus:
    """Every host's last heartbeat and the leases it holds, as ``gantryd status --fleet``."""
    views = await hosts.views()
    held = await holders(hosts.fleet)
    return FleetStatus(
        instance=instance,
        backend="redis",
        hosts=tuple(
            FleetHost(
                host=v.record.host,
                version=v.record.version,
                gone=v.gone,
                drained=v.record.drained,
                runners=v.record.runners,
                max_runners=v.record.max_runners,
                pools=tuple(
                    FleetPool(name=p.name, runners=p.runners, max_runners=p.max_runners)
                    for p in v.record.pools
                ),
                heartbeat_age=v.age,
                started_at=v.record.started_at,
                leases=tuple(sorted(c for c, h in held.items() if h == v.record.host)),
            )
            for v in views
        ),
    )


def _listener_text(status: ListenerStatus | None) -> str | None:
    if status is None:
        return None
    text = f"{status.state.value} (scale set {status.scale_set})"
    text = f"{text}: {status.reason}" if status.reason else text
    if status.scale_set_error:
        text += f"; updating the scale set failed: {status.scale_set_error}"
    if status.takeover:
        text += f"; took the scale set over: {status.takeover}"
    return text


def _with_positions(jobs: list[QueuedJob], now: float) -> tuple[JobInfo, ...]:
    """Jobs listed in serving order, with each claimable one's place in its pool.

    Counting along the list gives what ``JobQueue.position`` would, without a query per job:
    the listing is a prefix of the serving order, so every job ahead of one is in it.
    """
    seen: dict[str, int] = {}
    out = []
    for job in jobs:
        position = None
        if job.state is JobState.QUEUED and job.not_before <= now:
            position = seen[job.spec.pool] = seen.get(job.spec.pool, 0) + 1
        out.append(job_info(job, position))
    return tuple(out)


def _states(text: str) -> list[JobState]:
    if not text:
        return list(JobState)
    try:
        return [JobState(s) for s in text.split(",") if s]
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise AdminError(400, f"unknown job state in {text!r}; states are {names}") from None


def _limit(text: str) -> int:
    if not text:
        return JOBS_SHOWN
    if not text.isdigit() or not 1 <= int(text) <= MAX_JOBS_SHOWN:
        raise AdminError(400, f"limit must be a number from 1 to {MAX_JOBS_SHOWN}, not {text!r}")
    return int(text)


def _job_id(text: str) -> int:
    if not re.fullmatch(r"\d{1,19}", text):
        raise AdminError(400, f"job id must be a number, not {text!r}")
    return int(text)


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise AdminError(400, "client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise AdminError(413, f"request body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _in_use(path: Path) -> bool:
    """Does a live process answer on this socket (another gantryd)? A stale file does not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class AdminSocketBusy(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(f"another gantryd answers on {path}; stop it first")


async def serve_admin(
    app: AdminApp,
    runtime_dir: Path,
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin app on ``<runtime_dir>/admin.sock`` (mode 0660) until cancelled."""
    path = socket_path(runtime_dir)
    await trio.to_thread.run_sync(lambda: runtime_dir.mkdir(parents=True, exist_ok=True))
    if await trio.to_thread.run_sync(_in_use, path):
        raise AdminSocketBusy(path)
    config = hypercorn.config.Config()
    config.bind = [f"unix:{path}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hypercorn.trio.serve, app, config)
            os.chmod(path, SOCKET_MODE)
            task_status.started(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket would make clients think gantryd still runs
