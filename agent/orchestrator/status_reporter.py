"""The status reporter: drains the queue's outbox of job state changes into GitHub.

Every state change is appended to the outbox in the same transaction that makes it, and entries
per job coalesce (the latest state wins), so a crash never loses a report and a backlog never
sends stale ones. An entry is acknowledged only after GitHub accepted the report, and only if no
newer state was written meanwhile (``ack_outbox`` compares ``seq``): a ``kill -9`` at any point
means the entry is sent again after the restart.

With a GitHub App each served job gets one check run, created on its first report and then
updated: its id is kept in the `ReportStore` (written before the entry is acknowledged), and a
creation whose answer was lost is found again by ``external_id``, so a restart neither loses the
check run nor creates a second one. With a token, each report is a commit status whose context
is the job's own (``gantryd: <workflow> / <job> (attempt <n>, job <id>)``: GitHub keeps the
latest status per commit and context, so a shared one would let jobs overwrite each other's).
Creations are paced within GitHub's content-creation limits
(`ContentPacer`). ``reporting`` (all | failures | off) and ``cancel_dead_jobs`` are read from the
live configuration at every entry.

A pool can be held (GitHub refused its image's runner version: ``holds`` names why): a queued
job of that pool is reported with the reason, as a job waiting for approval is. The hold starts
and ends without a state change of the jobs it keeps queued, so when a pool's reason changes
the reporter reports its queued jobs again (`sync_holds`); each is read fresh from the queue,
and a newer state has its own outbox entry, reported after.

Errors: a report GitHub can never accept (422: too long, 1000 statuses reached) is logged and
dropped; anything else (5xx after the client's retries, a missing permission, no answer) keeps
the entry and retries it with backoff, logging a missing permission with what to grant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import trio

from agent.github.client import GitHubClient, GitHubError, PermissionMissing
from agent.github.ratelimit import ContentPacer
from agent.github.report_store import Reported, ReportStore, open_report_store
from agent.github.reports import Context, Report, build_report, check_run_name, wanted
from agent.queue.base import FINAL_STATES, JobQueue, JobState, OutboxEntry, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

BATCH = 100
IDLE_INTERVAL = 1.0  # seconds between outbox polls when it is empty
PARALLEL = 4  # entries (distinct jobs) reported at once
RETRY_BASE = 2.0  # seconds before retrying a failed entry, doubled per failure
RETRY_MAX = 300.0
REPEAT_LOG = 300.0  # seconds before the same error is logged again
USAGE_WAIT = 10.0  # seconds a final report waits for the runner's usage figures
STORE_FILE = "reporter.db"


class Usage(Protocol):
    """What a job's runner used (agent.container.store.JobUsage)."""

    @property
    def peak_memory(self) -> int: ...
    @property
    def cpu_seconds(self) -> float: ...
    @property
    def oom_killed(self) -> bool: ...


UsageLookup = Callable[[int], Awaitable[Usage | None]]
HoldLookup = Callable[[str], str | None]  # pool -> why it takes no job now, or None
HELD_JOBS = 1000  # queued jobs of a pool re-reported when its hold starts or ends


class _Dropped(Exception):
    """GitHub refused the report for good (a validation error): acknowledge it anyway."""


class _NotYet(Exception):
    """The final report waits (briefly) for the runner's usage figures."""


@dataclass
class _Backoff:
    failures: int
    not_before: float  # trio time


class StatusReporter:
    def __init__(
        self,
        *,
        queue: JobQueue,
        github: GitHubClient,
        live: LiveConfig,
        instance: str,
        store_path: Path | None = None,
        usage: UsageLookup | None = None,
        holds: HoldLookup | None = None,
        pacer: ContentPacer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._github = github
        self._live = live
        self._instance = instance
        self._store_path = store_path
        self._usage = usage
        self._holds = holds
        self._reported_holds: dict[str, str | None] = {}  # pool -> the hold last reported
        self._pacer = pacer or ContentPacer()
        self._clock = clock
        self._backoff: dict[int, _Backoff] = {}
        self._logged: dict[str, float] = {}
        self.delivered = 0  # reports GitHub accepted (for metrics and tests)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the outbox until cancelled; queue errors are logged and retried."""
        path = self._store_path or self._live.current.server.state_dir / STORE_FILE
        async with open_report_store(path) as store:
            task_status.started()
            while True:
                try:
                    handled = await self.drain_once(store)
                    handled += await self.sync_holds(store)
                except QueueError as exc:
                    log.error("reporter: queue error, retrying: %s", exc)
                    handled = 0
                if handled == 0:
                    await trio.sleep(IDLE_INTERVAL)

    async def drain_once(self, store: ReportStore) -> int:
        """Report every due entry of one batch; return how many were acknowledged."""
        entries = await self._queue.outbox(BATCH)
        now = trio.current_time()
        due = [
            e
            for e in entries
            if e.job_id not in self._backoff or self._backoff[e.job_id].not_before <= now
        ]
        acked = 0
        limiter = trio.CapacityLimiter(PARALLEL)

        async def one(entry: OutboxEntry) -> None:
            nonlocal acked
            async with limiter:
                try:
                    if await self._handle(store, entry):
                        acked += 1
                except QueueError as exc:  # here, not around the nursery: it would be grouped
                    log.error("reporter: queue error, job %s retried: %s", entry.job_id, exc)

        async with trio.open_nursery() as nursery:
            for entry in due:
                nursery.start_soon(one, entry)
        return acked

    def _hold(self, pool: str) -> str | None:
        return self._holds(pool) if self._holds is not None else None

    async def sync_holds(self, store: ReportStore) -> int:
        """Report the queued jobs of every pool whose hold started, changed or ended since it
        was last reported; return how many GitHub accepted. A pool whose reports fail is tried
        again on the next pass."""
        before = self.delivered
        for pool in self._live.current.pools:
            hold = self._hold(pool.name)
            if self._reported_holds.get(pool.name) == hold:
                continue
            jobs = await self._queue.list_jobs([JobState.QUEUED], pool=pool.name, limit=HELD_JOBS)
            complete = True
            for job in jobs:
                entry = OutboxEntry(
                    job_id=job.spec.job_id, seq=0, state=JobState.QUEUED, spec=job.spec
                )
                try:
                    await self._deliver(store, entry)
                except (_Dropped, _NotYet):
                    pass
                except GitHubError as exc:
                    self._retry_later(entry, exc)
                    complete = False
                    break
            if complete:
                self._reported_holds[pool.name] = hold
        return self.delivered - before

    async def _handle(self, store: ReportStore, entry: OutboxEntry) -> bool:
        """Report one entry and acknowledge it; False if it stays for a retry."""
        try:
            await self._deliver(store, entry)
        except _NotYet:
            return False
        except _Dropped as exc:
            log.error(
                "reporter: GitHub refused the report for job %s, dropping it: %s", entry.job_id, exc
            )
        except GitHubError as exc:
            self._retry_later(entry, exc)
            return False
        await self._queue.ack_outbox(entry.job_id, entry.seq)
        self._backoff.pop(entry.job_id, None)
        if entry.state in FINAL_STATES:
            await store.forget(entry.job_id)  # after the ack: a crash before it re-sends
        return True

    def _retry_later(self, entry: OutboxEntry, exc: GitHubError) -> None:
        backoff = self._backoff.get(entry.job_id, _Backoff(0, 0.0))
        backoff.failures += 1
        delay = min(RETRY_MAX, RETRY_BASE * 2 ** (backoff.failures - 1))
        backoff.not_before = trio.current_time() + delay
        self._backoff[entry.job_id] = backoff
        message = str(exc)
        now = trio.current_time()
        if isinstance(exc, PermissionMissing):
            key = f"permission {exc.permission}"
            if now - self._logged.get(key, -REPEAT_LOG) >= REPEAT_LOG:
                self._logged[key] = now
                log.error("reporter: cannot report job statuses: %s", message)
            return
        log.warning(
            "reporter: report for job %s not delivered, retrying in %.0fs: %s",
            entry.job_id,
            delay,
            message,
        )

    async def _deliver(self, store: ReportStore, entry: OutboxEntry) -> None:
        config = self._live.current
        spec = entry.spec
        if entry.state is JobState.DEAD and config.github.cancel_dead_jobs and spec.run_id:
            await self._cancel_run(entry)
        if (
            not spec.repository
            or not spec.head_sha
            or not wanted(config.github.reporting, entry.state)
        ):
            return
        ctx, stored = await self._context(store, entry)
        if entry.state is JobState.DONE and ctx.runner_name is not None and self._usage:
            used = await self._usage(entry.job_id)
            if used is not None:
                ctx = replace(
                    ctx,
                    peak_memory=used.peak_memory,
                    cpu_seconds=used.cpu_seconds,
                    oom_killed=used.oom_killed,
                )
            elif ctx.finished_at is not None and ctx.now - ctx.finished_at < USAGE_WAIT:
                raise _NotYet  # the pool records it as the container exits, just after
        report = build_report(entry, ctx)
        try:
            if self._github.is_app:
                await self._check_run(store, entry, report, ctx, stored)
            else:
                await self._pacer.wait()
                await self._github.create_commit_status(
                    spec.repository,
                    spec.head_sha,
                    report.status_body(entry),
                    installation_id=spec.installation_id,
                )
        except GitHubError as exc:
            if exc.status in (400, 422):
                raise _Dropped(str(exc)) from exc
            raise
        self.delivered += 1

    async def _context(
        self, store: ReportStore, entry: OutboxEntry
    ) -> tuple[Context, Reported | None]:
        """The report's context, and the job's stored report: the outbox hands out one entry per
        job at a time, so nothing else changes that row before ``_check_run`` uses it."""
        job = await self._queue.get(entry.job_id)
        started_at = None
        if entry.state is JobState.RUNNING and job is not None:
            await store.set_started(entry.job_id, job.updated_at)
        stored = await store.get(entry.job_id)
        if stored is not None:
            started_at = stored.started_at
        position = None
        if entry.state is JobState.QUEUED:
            position = await self._queue.position(entry.job_id)
        context = Context(
            instance=self._instance,
            pool=self._live.current.pool(entry.spec.pool),
            position=position,
            enqueued_at=job.enqueued_at if job is not None else None,
            started_at=started_at,
            finished_at=job.updated_at if job is not None and entry.state in FINAL_STATES else None,
            now=self._clock(),
            runner_name=job.runner_name if job is not None else None,
            hold=self._hold(entry.spec.pool) if entry.state is JobState.QUEUED else None,
        )
        return context, stored

    async def _check_run(
        self,
        store: ReportStore,
        entry: OutboxEntry,
        report: Report,
        ctx: Context,
        stored: Reported | None,
    ) -> None:
        spec = entry.spec
        body = report.check_run_body(entry, ctx)
        check_run_id = stored.check_run_id if stored is not None else None
        if check_run_id is None and stored is not None and stored.creating:
            # A creation was sent before a crash and its answer lost: adopt what GitHub made.
            check_run_id = await self._github.find_check_run(
                spec.repository,
                spec.head_sha,
                name=check_run_name(entry),
                external_id=str(spec.job_id),
                installation_id=spec.installation_id,
            )
            if check_run_id is not None:
                await store.set_check_run(entry.job_id, check_run_id)
        if check_run_id is not None:
            try:
                update = {k: v for k, v in body.items() if k != "head_sha"}  # create-only
                await self._github.update_check_run(
                    spec.repository, check_run_id, update, installation_id=spec.installation_id
                )
                return
            except GitHubError as exc:
                if exc.status != 404:
                    raise
                log.warning(
                    "reporter: check run %s of job %s is gone, creating it again",
                    check_run_id,
                    entry.job_id,
                )
        await store.mark_creating(entry.job_id)
        await self._pacer.wait()
        created = await self._github.create_check_run(
            spec.repository, body, installation_id=spec.installation_id
        )
        await store.set_check_run(entry.job_id, created)

    async def _cancel_run(self, entry: OutboxEntry) -> None:
        """Cancel a dead job's workflow run; only transient failures make the entry retry."""
        spec = entry.spec
        try:
            cancelled = await self._github.cancel_workflow_run(
                spec.repository, spec.run_id, installation_id=spec.installation_id
            )
        except GitHubError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            log.error(
                "reporter: could not cancel run %s of job %s: %s", spec.run_id, spec.job_id, exc
            )
            return
        if cancelled:
            log.info("cancelled workflow run %s of dead job %s", spec.run_id, spec.job_id)
