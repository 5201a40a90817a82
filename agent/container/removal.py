"""Taking runners away: scale-down of waiting runners, failures counted against jobs, retirement.

Removal order is GitHub first, then Docker (docs/design.md §1): deleting the registration of an
idle runner fails with 422 when a job was just assigned to it, and then the container is left
alone. A finished or failed runner is *retired*: registration (if it failed), usage record,
container, row — once, however many of its exit, its job's completion and a failure lead here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.container import dind, leases
from agent.container.docker_api import DockerAPI, DockerError
from agent.container.lifecycle import DEAD, Outcome, PoolObserver, PoolStats, Runner, RunnerState
from agent.container.registry import Registry
from agent.container.store import RunnerStore
from agent.github.client import DeleteOutcome, GitHubClient, GitHubError
from agent.queue.base import JobQueue, Lease, QueueError, StaleLease

log = logging.getLogger(__name__)


class Removal:
    """The pool manager's removals; ``on_capacity`` hears of every runner gone or job given
    back, so the scheduler may claim again."""

    def __init__(
        self,
        *,
        registry: Registry,
        queue: JobQueue,
        github: GitHubClient,
        docker: DockerAPI,
        store: RunnerStore,
        stats: PoolStats,
        observer: PoolObserver,
        clock: Callable[[], float],
        on_capacity: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._queue = queue
        self._github = github
        self._docker = docker
        self._store = store
        self._stats = stats
        self._observer = observer
        self._clock = clock
        self._on_capacity = on_capacity

    async def release(self, lease: Lease) -> None:
        """Give a claimed job back to the queue (no attempt consumed) and say so."""
        await leases.release(self._queue, lease)
        self._on_capacity()

    async def refuse_lease(self, lease: Lease, reason: str) -> None:
        """A job this host can never serve: ended at once with the reason (its report says
        why), no attempts spent on it; GitHub may still give it to a runner elsewhere."""
        log.warning("job %s: %s", lease.job_id, reason)
        try:
            await self._queue.cancel(lease.job_id, reason)
        except QueueError as exc:
            log.error("state database: cannot end job %s: %s", lease.job_id, exc)
        self._on_capacity()

    def job_ended(self, pool: str, outcome: str, duration: float | None) -> None:
        self._observer.job_ended(pool, outcome, duration)
        self._registry.notify()

    async def fail_lease(self, lease: Lease, reason: str) -> None:
        """Count a failed attempt against the claimed job (dead-lettered after the last)."""
        try:
            outcome = await self._queue.fail(lease, reason)
        except StaleLease:
            return
        log.warning(
            "job %s: %s (%s)",
            lease.job_id,
            reason,
            "dead-lettered" if outcome.dead else "will retry",
        )
        if outcome.dead:
            self.job_ended(lease.job.spec.pool, DEAD, None)
        self._on_capacity()

    async def scale_down(
        self,
        runner: Runner,
        *,
        reason: str,
        failure: bool = False,
        outcome: Outcome = Outcome.SCALE_DOWN,
    ) -> None:
        """Remove a waiting runner: GitHub registration first, then the container; left alone
        when GitHub says it just took a job, retried next pass on a GitHub error."""
        if runner.runner_id is not None:
            try:
                deleted = await self._github.delete_runner(
                    runner.target, runner.runner_id, installation_id=runner.installation_id
                )
            except GitHubError as exc:
                log.warning("deregistering runner=%s failed: %s", runner.name, exc)
                return  # try again on the next pass
            if deleted is DeleteOutcome.BUSY:
                self._stats.outcomes[Outcome.SCALE_DOWN_REFUSED] += 1
                self._registry.notify()
                log.info("runner %s just took a job; leaving it alone", runner.name)
                return
            runner.runner_id = None
        self._stats.outcomes[outcome] += 1
        log.info("removing runner=%s: %s", runner.name, reason)
        if failure:
            await self.fail(runner, reason)
        else:
            if runner.state in (RunnerState.CREATING, RunnerState.STARTING):
                # still being brought up (its job ended meanwhile): the provisioner, seeing
                # it gone, removes what it goes on to make (``Provisioner.provision``)
                runner.move(RunnerState.FAILED, now=self._clock())
            runner.move(RunnerState.REMOVED, now=self._clock())
            await self.remove_container(runner)
            await self._forget(runner)

    async def exited_waiting(self, runner: Runner, reason: str) -> None:
        """A runner exited before taking a job: if GitHub no longer knows it (it dropped the
        idle JIT runner, docs/github.md §3.2) that is a normal end and its job goes back to the
        queue untouched; otherwise a failure of its job. GitHubError: the next pass retries."""
        gone = False
        if runner.runner_id is not None:
            deleted = await self._github.delete_runner(
                runner.target, runner.runner_id, installation_id=runner.installation_id
            )
            runner.runner_id = None
            gone = deleted is DeleteOutcome.NOT_FOUND
        if gone:
            await self.end(runner, "GitHub removed the idle runner", Outcome.REMOVED_BY_GITHUB)
        else:
            self._stats.outcomes[Outcome.EXIT_BEFORE_JOB] += 1
            await self.fail(runner, reason)

    async def end(self, runner: Runner, reason: str, outcome: Outcome) -> None:
        """Retire a runner that ended through no fault of its job: the job it waited for goes
        back to the queue with no attempt counted; its registration (GitHub first) and
        container go."""
        self._stats.outcomes[outcome] += 1
        log.info("runner %s ended: %s", runner.name, reason)
        runner.reason = reason
        if runner.lease is not None:
            lease, runner.lease = runner.lease, None
            await self.release(lease)
        await self.deregister(runner)
        if runner.state in (RunnerState.CREATING, RunnerState.STARTING):
            runner.move(RunnerState.FAILED, now=self._clock())
        await self.retire(runner)

    async def deregister(self, runner: Runner) -> None:
        """Delete the runner's registration, if it has one; a GitHub error is logged and left
        to the registration sweep (the runner is going either way)."""
        if runner.runner_id is None:
            return
        try:
            await self._github.delete_runner(
                runner.target, runner.runner_id, installation_id=runner.installation_id
            )
        except GitHubError as exc:
            log.warning("deregistering runner=%s failed: %s", runner.name, exc)
        runner.runner_id = None

    async def fail(self, runner: Runner, reason: str) -> None:
        """gantryd could not serve the job with this runner: count it against the job."""
        runner.reason = runner.reason or reason
        if runner.state is not RunnerState.FAILED:
            runner.move(RunnerState.FAILED, now=self._clock())
        log.warning("runner failed runner=%s job=%s: %s", runner.name, runner.made_for, reason)
        if runner.lease is not None:
            lease, runner.lease = runner.lease, None
            await self.fail_lease(lease, runner.reason)
        await self.retire(runner)

    async def retire(self, runner: Runner) -> None:
        """The runner is done with (job finished, or failed): drop registration and container."""
        if runner.retiring:
            return  # its exit and its job's completion both lead here
        runner.retiring = True
        if runner.runner_id is not None and runner.state is RunnerState.FAILED:
            try:
                await self._github.delete_runner(
                    runner.target, runner.runner_id, installation_id=runner.installation_id
                )
            except GitHubError as exc:
                log.warning("deregistering runner=%s failed: %s", runner.name, exc)
        if runner.state is RunnerState.BUSY:
            runner.move(RunnerState.FINISHED, now=self._clock())
        if runner.state is not RunnerState.REMOVED:
            runner.move(RunnerState.REMOVED, now=self._clock())
        if runner.running_job is not None:
            try:
                await self._store.record_usage(runner, runner.running_job)
            except QueueError as exc:
                log.error("state database: cannot record usage of %s: %s", runner.name, exc)
        await self.remove_container(runner)
        await self._forget(runner)

    async def remove_container(self, runner: Runner) -> None:
        if runner.sidecar:  # runner, sidecar, volumes: what the name says may exist
            try:
                await dind.remove_pair(self._docker, runner.name, runner.container_id)
            except DockerError as exc:
                log.warning("removing the pair of runner=%s failed: %s", runner.name, exc)
            return
        if runner.container_id is None:
            return
        try:
            await self._docker.remove(runner.container_id)
        except DockerError as exc:
            log.warning("removing container of runner=%s failed: %s", runner.name, exc)

    async def _forget(self, runner: Runner) -> None:
        await self._registry.forget(runner)
        self._on_capacity()
