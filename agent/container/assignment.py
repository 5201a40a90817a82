"""Which runner serves which job, as GitHub's ``in_progress`` / ``completed`` events tell.

A JIT runner takes any queued job its labels cover within its scope (docs/design.md §1), so
the event may name a runner made for another job. That runner has *stolen* the job: the job it
was made for takes over the waiting runner of the stolen one (their repositories swap with
them), or goes back to the queue. Each job this host served is counted once when it ends, with its
duration from ``in_progress``; the start record outlives the runner, whose ``completed`` may
come after the runner (and its record) is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from agent.config import PoolConfig
from agent.container.events import JobEvent
from agent.container.lifecycle import PoolObserver, Runner, RunnerState, job_outcome
from agent.container.policy import start_record_expired
from agent.container.registry import Registry
from agent.container.removal import Removal
from agent.queue.base import JobQueue, Lease, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)


class Assignments:
    """Follows job events for the pool manager; ``refill`` tops up a pool's warm runners once
    one of them took a job."""

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        registry: Registry,
        removal: Removal,
        observer: PoolObserver,
        clock: Callable[[], float],
        refill: Callable[[PoolConfig], None],
    ) -> None:
        self._live = live
        self._queue = queue
        self._registry = registry
        self._removal = removal
        self._observer = observer
        self._clock = clock
        self._refill = refill
        # job -> (pool, in_progress time) for jobs our runners run
        self._started: dict[int, tuple[str, float]] = {}

    async def consume(
        self, events: trio.MemoryReceiveChannel[JobEvent], on_job_taken: Callable[[int], None]
    ) -> None:
        """Follow ``events`` until the channel closes; ``on_job_taken`` hears first of every
        job GitHub gave to a runner or ended, so a claim held elsewhere can be let go."""
        async with events:
            async for event in events:
                on_job_taken(event.job_id)
                if event.action == "in_progress":
                    await self.job_running(event.job_id, event.runner_name)
                else:
                    await self.job_completed(event.job_id, event.runner_name, event.conclusion)

    def record_start(self, job_id: int, pool: str, since: float) -> None:
        """An adopted runner runs ``job_id`` since ``since``: its end is counted here too."""
        self._started[job_id] = (pool, since)

    def forget_unfinished(self, now: float) -> None:
        """Drop start records of jobs whose ``completed`` never came once past any timeout."""
        for job_id, (pool_name, since) in list(self._started.items()):
            if start_record_expired(self._live.current.pool(pool_name), since=since, now=now):
                del self._started[job_id]

    async def job_running(
        self, job_id: int, runner_name: str | None, *, late: bool = False
    ) -> None:
        """GitHub gave ``job_id`` to ``runner_name``; ``late``: only learnt at its completion
        (its start time is unknown, so neither its queue wait nor its duration is measured)."""
        runner = self._registry.get(runner_name)
        if runner is None:
            return  # not one of ours (another host's, or a hand-installed runner)
        if runner.running_job == job_id:
            return  # duplicate
        made_for, lease, repository = runner.made_for, runner.lease, runner.repository
        runner.start_job(job_id, now=self._clock())
        if made_for != job_id:
            await self._reassociate(runner, job_id, made_for, lease, repository)
        await self._registry.save(runner)
        pool = self._live.current.pool(runner.pool)
        if pool is not None:
            self._refill(pool)
        log.info("job running job=%s runner=%s", job_id, runner.name)
        if not late:
            await self._job_started(job_id, runner.pool)

    async def _job_started(self, job_id: int, pool: str) -> None:
        now = self._clock()
        self._started[job_id] = (pool, now)
        try:
            entry = await self._queue.get(job_id)
        except QueueError as exc:
            log.warning("job %s: queue wait not measured: %s", job_id, exc)
            return
        if entry is not None:
            self._observer.job_started(pool, max(0.0, now - entry.enqueued_at))
            self._registry.notify()

    async def _reassociate(
        self,
        thief: Runner,
        stolen: int,
        orphan: int | None,
        orphan_lease: Lease | None,
        orphan_repository: str | None,
    ) -> None:
        """``thief`` took ``stolen`` instead of ``orphan``, the job it was made for."""
        other = self._registry.waiting_for(stolen)
        if other is not None:
            thief.repository = other.repository  # the stolen job's
            other.assign(orphan, orphan_lease, repository=orphan_repository, now=self._clock())
            log.info(
                "runner %s now waits for job %s (runner %s took job %s)",
                other.name,
                orphan,
                thief.name,
                stolen,
            )
            await self._registry.save(other)
        elif orphan_lease is not None:
            await self._removal.release(orphan_lease)

    async def job_completed(
        self, job_id: int, runner_name: str | None, conclusion: str | None = None
    ) -> None:
        """Each job this host served is counted once: a duplicate delivery finds neither its
        start record nor a runner that has yet to learn it ran the job."""
        started = self._started.pop(job_id, None)
        duration = None if started is None else self._clock() - started[1]
        runner = self._registry.get(runner_name)
        if runner is not None:
            counted = started is not None
            if runner.running_job != job_id:
                await self.job_running(job_id, runner.name, late=True)  # in_progress lost
                counted = True
            if counted:
                self._removal.job_ended(runner.pool, job_outcome(conclusion), duration)
            if runner.state is RunnerState.BUSY:
                runner.move(RunnerState.FINISHED, now=self._clock())
                await self._registry.save(runner)
            if runner.exited_at is not None:
                await self._removal.retire(runner)
            return
        if started is not None:  # its runner ran it and exited before this webhook came
            self._removal.job_ended(started[0], job_outcome(conclusion), duration)
            return
        waiting = self._registry.waiting_for(job_id)
        if waiting is not None:
            # The job ended without running here (cancelled on GitHub): its runner is surplus.
            self._removal.job_ended(waiting.pool, job_outcome(conclusion), None)
            waiting.lease = None
            # Idle, or still being created or started (a fleet's other host, or a runner not
            # ours, ran the job meanwhile): the provisioner removes what it goes on to make.
            await self._removal.scale_down(waiting, reason=f"job {job_id} completed elsewhere")
