"""The scale-set listener: a second job source, one service per ``source = "scale-set"`` pool.

It long-polls GitHub's Actions service over outbound HTTPS (docs/scale-set.md), so the host needs
no public endpoint. Per message, in this order (GARM's, so nothing is lost to a crash):

1. ``JobAvailable``: acquire the runner requests (required on GHES; github.com sends request
   id 0, which needs none), find each job's REST id by ``workflowRunId`` + ``jobDisplayName``
   (the message's ``jobId`` is the service's own id), and commit it to the durable queue, which
   dedupes by that id; ``JobStarted`` / ``JobCompleted`` move the job as the webhook's
   ``in_progress`` / ``completed`` do (queue first, then a `JobEvent` for the runners);
2. only then delete (acknowledge) the message: a crash before it gets the message again;
3. then persist ``lastMessageId`` (``listener.db`` in ``state_dir``) so a restart resumes.

Sessions are never handed over by GitHub. The id of the session open is kept in ``listener.db``
until it is closed, so a 409 after this host was killed (SIGKILL, power loss) is met by closing
that session by its id and opening a new one at once; a 409 from another host's session is
waited out with backoff (GitHub frees an abandoned session after ~90 s; actions/scaleset and
GARM only retry), its reason in ``status`` for ``/readyz`` and ``gantryd status``; every other
failure is retried likewise, never a crash loop. A reload (``config_changed``) PATCHes the scale
set to the pool's labels and runner group while the session stays open. A 401 in the
middle of a poll is the client's: it refreshes the session token and retries once. The pool's
runners get their JIT configs from the scale set (`generate_jit_config`), so only its jobs
reach them.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
import trio

from agent.config import PoolConfig, Scope
from agent.container.events import JobEvent
from agent.db import Database, open_database
from agent.github.actions import list_run_jobs
from agent.github.client import GitHubClient, GitHubError, JitConfig, RunnerTarget
from agent.github.scaleset import ScaleSetClient
from agent.github.scaleset_answers import SessionConflict
from agent.github.scaleset_types import (
    JobMessage,
    JobMessageKind,
    MessageSession,
    ProtocolError,
    ScaleSet,
    ScaleSetMessage,
    ScaleSetSpec,
    Statistics,
)
from agent.orchestrator.job_parser import PayloadError, parse_rest_job, spec_in_pool
from agent.queue.base import EnqueueOutcome, JobQueue, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

CURSOR_FILE = "listener.db"
RETRY_CAP = 15.0  # seconds between attempts at most: a freed session is taken within this
SCALE_SET_WAIT = 60.0  # seconds provisioning waits for the listener to find its scale set
SESSION_CLOSE_DEADLINE = 5.0  # seconds to close the session when stopping
# JobCompleted's result, as the webhook's conclusion the queue records.
_CONCLUSIONS = {"succeeded": "success", "failed": "failure", "canceled": "cancelled"}


def github_web_url(api_url: str) -> str:
    """The web URL a scale set's config URL is built on, from the REST API's URL."""
    api_url = api_url.rstrip("/")
    if api_url == "https://api.github.com":
        return "https://github.com"
    if api_url.endswith("/api/v3"):  # GHES
        return api_url.removesuffix("/api/v3")
    if api_url.startswith("https://api.") and api_url.endswith(".ghe.com"):
        return "https://" + api_url.removeprefix("https://api.")
    return api_url  # the emulator serves both at one base


# --- lastMessageId across restarts ------------------------------------------------------------


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.table("cursors").create({"scale_set": str, "last_message_id": int}, pk="scale_set")


def _schema_v2(db: sqlite_utils.Database) -> None:
    db.table("sessions").create({"scale_set": str, "session_id": str}, pk="scale_set")


class CursorStore:
    """Each scale set's last acknowledged message id, and the id of the session this host holds
    on it until it is closed (key: ``target/name``): after a crash it names the session left
    open, which the next start closes instead of waiting it out."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT last_message_id FROM cursors WHERE scale_set = ?", (key,)
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._db.read(q)

    async def set(self, key: str, message_id: int) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO cursors (scale_set, last_message_id) VALUES (?, ?) ON CONFLICT "
                "(scale_set) DO UPDATE SET last_message_id = excluded.last_message_id",
                (key, message_id),
            )
        )

    async def get_session(self, key: str) -> str | None:
        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT session_id FROM sessions WHERE scale_set = ?", (key,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self._db.read(q)

    async def set_session(self, key: str, session_id: str | None) -> None:
        """Record the session opened (before it is used), or forget it once closed."""

        def q(conn: sqlite3.Connection) -> None:
            if session_id is None:
                conn.execute("DELETE FROM sessions WHERE scale_set = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO sessions (scale_set, session_id) VALUES (?, ?) ON CONFLICT "
                    "(scale_set) DO UPDATE SET session_id = excluded.session_id",
                    (key, session_id),
                )

        await self._db.write(q)


@asynccontextmanager
async def open_cursor_store(state_dir: Path) -> AsyncIterator[CursorStore]:
    async with open_database(state_dir / CURSOR_FILE, migrations=(_schema_v1, _schema_v2)) as db:
        yield CursorStore(db)


# --- the listener -----------------------------------------------------------------------------


class ListenerState(enum.StrEnum):
    STARTING = "starting"  # finding the scale set, opening the session
    LISTENING = "listening"  # the session is open and polled
    CONFLICT = "conflict"  # another session holds the scale set: waiting it out
    FAILING = "failing"  # GitHub or the queue failed: retrying with backoff


@dataclass
class ListenerStatus:
    """What ``/readyz``, ``gantryd status`` and the metrics show of one listener."""

    pool: str
    scale_set: str
    state: ListenerState = ListenerState.STARTING
    reason: str = ""  # why not listening
    since: float = 0.0
    scale_set_id: int | None = None
    last_message_id: int = 0
    assigned: int = 0  # statistics.totalAssignedJobs (running included)
    target: int = 0  # min(max_runners, assigned + min_idle), capped by the host's limit
    messages: int = 0
    jobs_enqueued: int = 0
    scale_set_error: str = ""  # why the last update of the scale set after a reload failed
    takeover: str = ""  # the last session of an earlier run of this host closed to open ours


class ScaleSetNotReady(GitHubError):
    """A runner was asked for before the listener found its scale set."""

    def __init__(self, pool: str) -> None:
        super().__init__("POST", "generatejitconfig", 0, f'pool "{pool}": scale set not ready')


class Listener:
    """Serves one scale-set pool's jobs from its scale set's message queue.

    ``run`` owns the session: it returns only by cancellation, closing the session on the way
    out (shielded, bounded) so a clean restart need not wait the old one out."""

    def __init__(
        self,
        pool: PoolConfig,
        *,
        live: LiveConfig,
        queue: JobQueue,
        github: GitHubClient,
        cursors: CursorStore,
        job_events: trio.MemorySendChannel[JobEvent],
        on_enqueue: Callable[[], None],
        owner: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool_name = pool.name
        self._live = live
        self._queue = queue
        self._github = github
        self._cursors = cursors
        self._job_events = job_events
        self._on_enqueue = on_enqueue
        self._owner = owner
        self._clock = clock
        self._name = pool.scale_set_name  # as started: a reload does not rename the scale set
        self._key = f"{pool.scale_set_target}/{pool.scale_set_name}"
        target = (
            RunnerTarget(organization=pool.scale_set_target)
            if pool.scope is Scope.ORGANIZATION
            else RunnerTarget(repository=pool.scale_set_target)
        )
        self.client = ScaleSetClient(
            github, target, github_url=github_web_url(live.current.github.api_url)
        )
        self.status = ListenerStatus(pool=pool.name, scale_set=self._key, since=clock())
        self._scale_set: ScaleSet | None = None
        self._found = trio.Event()  # _scale_set is known
        self._enqueued = trio.Event()  # set and replaced whenever a job is newly queued
        self._handled = trio.Event()  # set and replaced whenever a message is acknowledged
        self._changed = trio.Event()  # set and replaced on every change of status.state
        self._reconfigure = trio.Event()  # set by config_changed (a reload)
        self._reconfigured = trio.Event()  # set and replaced after each update attempt
        # (workflow run, job name) -> REST job id, for JobStarted/JobCompleted
        self._job_ids: dict[tuple[int, str], int] = {}

    @property
    def pool(self) -> PoolConfig:
        pool = self._live.current.pool(self.pool_name)
        if pool is None:  # removed by a reload: keep the one it started with
            raise ProtocolError(f'pool "{self.pool_name}" is no longer configured')
        return pool

    async def wait_enqueued(self) -> None:
        """Until the listener next commits a new job to the queue."""
        await self._enqueued.wait()

    async def wait_handled(self) -> None:
        """Until the listener next acknowledges a message (its effects committed)."""
        await self._handled.wait()

    async def wait_reconfigured(self) -> None:
        """Until the listener next tried to bring the scale set to a reloaded configuration."""
        await self._reconfigured.wait()

    async def wait_state(self, state: ListenerState) -> None:
        """Until ``status.state`` is ``state``."""
        while self.status.state is not state:
            await self._changed.wait()

    async def generate_jit_config(self, name: str) -> JitConfig:
        """A JIT runner inside the scale set: the pool's provisioning uses this, not REST.

        Right after a start the queue may hand out jobs before the scale set is found: wait
        for it a while rather than fail the job's attempt at once."""
        with trio.move_on_after(SCALE_SET_WAIT):
            await self._found.wait()
        if self._scale_set is None:
            raise ScaleSetNotReady(self.pool_name)
        return await self.client.generate_jit_config(self._scale_set.id, name)

    def _set(self, state: ListenerState, reason: str = "") -> None:
        if state is not self.status.state or reason != self.status.reason:
            self.status.since = self._clock()
        moved = state is not self.status.state
        self.status.state, self.status.reason = state, reason
        if moved:
            self._changed.set()
            self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; started() at once (GitHub may be unreachable for a while)."""
        task_status.started()
        async with self._job_events, trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_config)  # catches its failures: never raises
            await self._listen()

    async def _listen(self) -> None:
        failures = 0
        while True:
            served_before = self.status.messages
            try:
                await self._serve_session()
            except SessionConflict as exc:
                self._set(
                    ListenerState.CONFLICT,
                    f"another session holds scale set {self._key} ({exc}); waiting for it to "
                    "close or lapse (GitHub frees an abandoned one after about 90 s)",
                )
            except (GitHubError, QueueError, ProtocolError, PayloadError) as exc:
                self._set(ListenerState.FAILING, f"{type(exc).__name__}: {exc}")
            if self.status.messages > served_before:
                failures = 0  # it was serving until now (e.g. evicted): reopen soon
            failures += 1
            delay = min(RETRY_CAP, 2.0 ** (failures - 1))
            log.warning(
                "listener pool=%s %s: %s; retrying in %.0fs",
                self.pool_name,
                self.status.state.value,
                self.status.reason,
                delay,
            )
            await trio.sleep(delay)

    def _spec(self) -> ScaleSetSpec:
        """The scale set the configuration in force asks for; its name is the one started with
        (``scale_set_name`` is a restart key: a reload does not rename the scale set)."""
        pool = self.pool
        return ScaleSetSpec(name=self._name, runner_group=pool.runner_group, labels=pool.labels)

    def config_changed(self) -> None:
        """A reload put a new configuration in force: bring the scale set's labels and runner
        group to it (``PATCH`` while the session stays open)."""
        self._reconfigure.set()

    async def _serve_session(self) -> None:
        if self._scale_set is None:
            self._scale_set = await self.client.ensure_scale_set(self._spec())
            self.status.scale_set_id = self._scale_set.id
            self._found.set()
        elif self.status.scale_set_error:
            self._reconfigure.set()  # the last update failed: try it again in this session
        session = await self._open_session(self._scale_set.id)
        try:
            self._set(ListenerState.LISTENING)
            log.info(
                "listener pool=%s session open on scale set %s (id %d)",
                self.pool_name,
                self._key,
                self._scale_set.id,
            )
            self._scale(session.statistics)
            last = self.status.last_message_id = await self._cursors.get(self._key)
            while True:
                message = await self.client.get_message(session, last, self._capacity())
                if message is None:
                    continue
                await self._handle(session, message)
                await self.client.delete_message(session, message.id)
                last = self.status.last_message_id = message.id
                await self._cursors.set(self._key, last)
                self._handled.set()
                self._handled = trio.Event()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SESSION_CLOSE_DEADLINE):
                try:
                    await self.client.delete_session(session)
                    await self._cursors.set_session(self._key, None)
                except (GitHubError, QueueError) as exc:
                    log.warning("listener pool=%s closing session: %s", self.pool_name, exc)

    async def _open_session(self, scale_set_id: int) -> MessageSession:
        """Create the session and record its id before using it. A 409 while the id of a
        session this host opened is still recorded means a process of ours died without closing
        it (SIGKILL, power loss): close that one by its id and create again, rather than wait
        ~90 s for GitHub to drop it. A session of another host is never closed: its id is not
        ours, so that 409 stands and is waited out."""
        try:
            session = await self.client.create_session(scale_set_id, self._owner)
        except SessionConflict as conflict:
            stale = await self._cursors.get_session(self._key)
            if stale is None:
                raise
            log.warning(
                "listener pool=%s scale set %s: a session is open (%s); closing session %s, "
                "left open by an earlier run of this host, and opening a new one",
                self.pool_name,
                self._key,
                conflict,
                stale,
            )
            await self.client.delete_session_id(scale_set_id, stale)  # gone already: no error
            await self._cursors.set_session(self._key, None)
            self.status.takeover = f"closed session {stale}, left open by an earlier run"
            session = await self.client.create_session(scale_set_id, self._owner)
        await self._cursors.set_session(self._key, session.id)
        return session

    async def _follow_config(self) -> None:
        """Apply each reload to the scale set once it is found, the session left open. A failed
        update is logged and in ``status.scale_set_error``; the next reload or session tries
        again."""
        await self._found.wait()
        while True:
            await self._reconfigure.wait()
            self._reconfigure = trio.Event()
            try:
                await self._update_scale_set()
            except (GitHubError, ProtocolError) as exc:
                self.status.scale_set_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "listener pool=%s updating scale set %s after reload: %s",
                    self.pool_name,
                    self._key,
                    exc,
                )
            self._reconfigured.set()
            self._reconfigured = trio.Event()

    async def _update_scale_set(self) -> None:
        """``PATCH`` the scale set (found by id: a changed runner group moves it rather than
        making a second one) when its labels, group or settings differ from the spec."""
        assert self._scale_set is not None
        spec = self._spec()
        group = await self.client.runner_group(spec.runner_group)
        current = await self.client.get_scale_set_by_id(self._scale_set.id)
        if not current.matches(spec, group.id):
            current = await self.client.update_scale_set(current.id, spec, group.id)
            log.info(
                "listener pool=%s scale set %s updated: labels %s, runner group %s",
                self.pool_name,
                self._key,
                ", ".join(spec.label_names()),
                current.runner_group_name,
            )
        self._scale_set = current
        self.status.scale_set_error = ""

    def _capacity(self) -> int:
        """``X-ScaleSetMaxCapacity``: the pool's cap under the host's."""
        return min(self.pool.max_runners, self._live.current.scheduler.max_runners)

    def _scale(self, statistics: Statistics) -> None:
        pool = self.pool
        self.status.assigned = statistics.total_assigned_jobs
        self.status.target = min(self._capacity(), statistics.total_assigned_jobs + pool.min_idle)

    async def _handle(self, session: MessageSession, message: ScaleSetMessage) -> None:
        self.status.messages += 1
        offered = [j for j in message.jobs if j.kind is JobMessageKind.AVAILABLE]
        if ids := [j.runner_request_id for j in offered if j.runner_request_id]:
            granted = set(await self.client.acquire_jobs(session, ids))
            if missing := set(ids) - granted:
                log.info("listener pool=%s not granted %s", self.pool_name, sorted(missing))
            offered = [
                j for j in offered if not j.runner_request_id or j.runner_request_id in granted
            ]
        for job in offered:
            await self._enqueue(job)
        for job in message.jobs:
            if job.kind is JobMessageKind.STARTED:
                await self._started(job)
            elif job.kind is JobMessageKind.COMPLETED:
                await self._completed(job)
        self._scale(message.statistics)

    async def _rest_job(self, job: JobMessage) -> tuple[Mapping[str, Any], int | None] | None:
        """The REST job a message is about (same run, same display name; an open one first)
        and the installation that sees it."""
        installation = None
        if self._github.is_app:
            target = RunnerTarget(repository=job.repository)
            installation = await self._github.installation_id(target)
        params: Mapping[str, str] | None = None
        candidates: list[Mapping[str, Any]] = []
        while True:
            page = await list_run_jobs(
                self._github,
                job.repository,
                job.workflow_run_id,
                installation_id=installation,
                page=params,
            )
            candidates += [j for j in page.items if j.get("name") == job.job_display_name]
            if page.next is None:
                break
            params = page.next
        open_jobs = [j for j in candidates if j.get("status") != "completed"]
        if not (open_jobs or candidates):
            return None
        return (open_jobs or candidates)[0], installation

    async def _job_id(self, job: JobMessage) -> int | None:
        key = (job.workflow_run_id, job.job_display_name)
        if key not in self._job_ids:
            found = await self._rest_job(job)
            if found is None:
                return None
            self._job_ids[key] = int(found[0]["id"])
        return self._job_ids[key]

    async def _enqueue(self, job: JobMessage) -> None:
        found = await self._rest_job(job)
        if found is None:
            raise ProtocolError(
                f"run {job.workflow_run_id} of {job.repository} has no job named "
                f"{job.job_display_name!r}"
            )
        rest_job, installation = found
        event = parse_rest_job(rest_job, repository=job.repository, installation_id=installation)
        self._job_ids[(job.workflow_run_id, job.job_display_name)] = event.job_id
        spec = spec_in_pool(event, self.pool, self._live.current)
        outcome = await self._queue.enqueue(spec)
        log.info(
            "listener queued job=%s repository=%s pool=%s outcome=%s",
            event.job_id,
            job.repository,
            self.pool_name,
            outcome.value,
        )
        if outcome is EnqueueOutcome.CREATED:
            self.status.jobs_enqueued += 1
            self._on_enqueue()
            self._enqueued.set()
            self._enqueued = trio.Event()

    async def _started(self, job: JobMessage) -> None:
        job_id = await self._job_id(job)
        if job_id is None:
            return
        if await self._queue.get(job_id) is None:
            await self._queue.finish(job_id, "started before gantryd saw it queued")
        else:
            await self._queue.mark_running(job_id, job.runner_name or "")
        await self._job_events.send(
            JobEvent(job_id=job_id, action="in_progress", runner_name=job.runner_name)
        )

    async def _completed(self, job: JobMessage) -> None:
        job_id = await self._job_id(job)
        if job_id is None:
            return
        if job.runner_name is None:
            # Withdrawn before a runner took it ("canceled": not acquired in time); GitHub offers
            # it again unless the job itself ended, which its REST status says.
            found = await self._rest_job(job)
            if found is None or found[0].get("status") != "completed":
                return
        conclusion = _CONCLUSIONS.get(job.result or "", job.result or "unknown")
        await self._queue.finish(job_id, conclusion)
        self._on_enqueue()
        await self._job_events.send(
            JobEvent(
                job_id=job_id,
                action="completed",
                runner_name=job.runner_name,
                conclusion=conclusion,
            )
        )
