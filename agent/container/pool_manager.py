"""The pool supervisor: provisions runner containers for claimed jobs and cleans up after them.

It owns every ``Runner`` of this host. Inputs: leases handed over by the scheduler
(``provision_soon``), job events from intake (``in_progress`` / ``completed`` naming a runner),
and Docker events (a container died). Each runner is made for one claimed job, but GitHub may
give it any queued job its labels cover (DESIGN §1): when that happens, the job the runner was
made for takes over the waiting runner of the job it stole, or goes back to the queue.

Removal order is GitHub first, then Docker (reference §4): deleting the registration of an idle
runner fails with 422 when a job was just assigned to it, and then the container is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from agent.config import PoolConfig, Scope
from agent.container.docker_api import (
    MANAGED_LABEL,
    ContainerEvent,
    ContainerSpec,
    DockerAPI,
    DockerError,
)
from agent.container.lifecycle import LIVE_STATES, Runner, RunnerState
from agent.container.security import host_options
from agent.github.client import DeleteOutcome, GitHubClient, GitHubError, RunnerTarget
from agent.queue.base import JobQueue, Lease, QueueError, StaleLease
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

# The runner reads its JIT config from stdin, so it never shows in `docker inspect` (Env/Cmd);
# the official image's run.sh then reads ACTIONS_RUNNER_INPUT_JITCONFIG and unsets it.
RUNNER_COMMAND = (
    "/bin/sh",
    "-c",
    "read -r ACTIONS_RUNNER_INPUT_JITCONFIG && export ACTIONS_RUNNER_INPUT_JITCONFIG"
    " && exec /home/runner/run.sh",
)
REPOSITORY_RUNNER_GROUP = 1  # the only group a repository-scoped runner can join
MAINTENANCE_INTERVAL = 1.0  # seconds between heartbeat/timeout passes
EVENTS_RETRY_MAX = 30.0


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """A job state change intake has committed to the queue, for the runners to follow."""

    job_id: int
    action: Literal["in_progress", "completed"]
    runner_name: str | None
    conclusion: str | None = None


class PoolManager:
    """Runner containers of this host: provisioning, association with jobs, cleanup.

    ``run`` is the long-lived service; ``provision_soon`` may be called once it has started.
    """

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        github: GitHubClient,
        docker: DockerAPI,
        instance: str,
        on_capacity: Callable[[], None] = lambda: None,
        exit_settle: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live = live
        self._queue = queue
        self._github = github
        self._docker = docker
        self._instance = instance
        self._on_capacity = on_capacity
        self._exit_settle = exit_settle  # how long a runner that exited idle waits for a webhook
        self._clock = clock
        self._runners: dict[str, Runner] = {}
        self._by_container: dict[str, str] = {}
        self._exited_at: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()  # set and replaced whenever a runner is forgotten
        self._provisioning = trio.CapacityLimiter(live.current.scheduler.concurrency)

    # -- queries --------------------------------------------------------------------------

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    def free_slots(self, pool: PoolConfig) -> int:
        """How many more runners this pool may start now (pool and global caps)."""
        live = [r for r in self._runners.values() if r.state in LIVE_STATES]
        in_pool = sum(1 for r in live if r.pool == pool.name)
        global_cap = self._live.current.scheduler.max_runners
        return max(0, min(pool.max_runners - in_pool, global_cap - len(live)))

    async def wait_no_runners(self) -> None:
        """Return once this host has no runner left (drain, demo, tests); caller bounds it."""
        while self._runners:
            await self._changed.wait()

    # -- service --------------------------------------------------------------------------

    async def run(
        self,
        job_events: trio.MemoryReceiveChannel[JobEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch Docker and job events and keep runners in order, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._watch_docker)
            nursery.start_soon(self._consume_job_events, job_events)
            nursery.start_soon(self._maintain)
            task_status.started()

    def provision_soon(self, lease: Lease) -> None:
        """Count a runner for this claimed job at once, and create it in the background."""
        assert self._nursery is not None, "PoolManager.run has not started"
        spec = lease.job.spec
        pool = self._live.current.pool(spec.pool)
        if pool is None:
            self._nursery.start_soon(
                self._fail_lease, lease, f"pool {spec.pool!r} no longer exists"
            )
            return
        if pool.scope is Scope.REPOSITORY:
            target = RunnerTarget(repository=spec.repository)
        else:
            target = RunnerTarget(organization=spec.owner)
        prefix = self._live.current.github.runner_prefix
        now = self._clock()
        runner = Runner(
            name=f"{prefix}-{self._instance}-{secrets.token_hex(4)}",
            pool=pool.name,
            target=target,
            installation_id=spec.installation_id,
            labels=pool.labels,
            created_at=now,
            state_since=now,
            made_for=spec.job_id,
            lease=lease,
        )
        self._runners[runner.name] = runner
        self._nursery.start_soon(self._provision, runner, pool)

    # -- provisioning ---------------------------------------------------------------------

    async def _provision(self, runner: Runner, pool: PoolConfig) -> None:
        async with self._provisioning:
            try:
                jit = await self._github.generate_jitconfig(
                    runner.target,
                    name=runner.name,
                    labels=pool.labels,
                    runner_group_id=REPOSITORY_RUNNER_GROUP,
                    installation_id=runner.installation_id,
                )
                runner.runner_id = jit.runner_id
                await self._ensure_image(pool)
                container_id = await self._docker.create(self._container_spec(runner, pool))
                runner.container_id = container_id
                self._by_container[container_id] = runner.name
                runner.move(RunnerState.STARTING, now=self._clock())
                await self._docker.start_with_stdin(
                    container_id, jit.encoded.reveal().encode("ascii") + b"\n"
                )
            except (GitHubError, DockerError) as exc:
                await self._fail(runner, str(exc))
                return
        if runner.state is RunnerState.STARTING:
            runner.move(RunnerState.IDLE, now=self._clock())
        log.info(
            "runner started runner=%s pool=%s job=%s repository=%s",
            runner.name,
            runner.pool,
            runner.made_for,
            runner.target.repository,
        )

    async def _ensure_image(self, pool: PoolConfig) -> None:
        policy = pool.pull_policy.value
        if policy == "always" or (
            policy == "if-not-present" and not await self._docker.image_present(pool.image)
        ):
            log.info("pulling image=%s pool=%s", pool.image, pool.name)
            digest = await self._docker.pull(pool.image)
            log.info("pulled image=%s digest=%s", pool.image, digest)
        elif policy == "never" and not await self._docker.image_present(pool.image):
            raise DockerError(f"image {pool.image} is not present and pull_policy is never")

    def _container_spec(self, runner: Runner, pool: PoolConfig) -> ContainerSpec:
        expires = runner.created_at + pool.bootstrap_timeout + pool.job_timeout + pool.stop_grace
        labels = {
            **pool.docker_labels,
            MANAGED_LABEL: "true",
            "io.gantryd.instance": self._instance,
            "io.gantryd.pool": pool.name,
            "io.gantryd.runner": runner.name,
            "io.gantryd.job": str(runner.made_for),
            "io.gantryd.created": str(int(runner.created_at)),
            "io.gantryd.expires": str(int(expires)),
        }
        return ContainerSpec(
            name=runner.name,
            image=pool.image,
            command=RUNNER_COMMAND,
            labels=labels,
            environment=dict(pool.env),
            host=host_options(pool),
            stdin_open=True,
        )

    # -- job events -----------------------------------------------------------------------

    async def _consume_job_events(self, events: trio.MemoryReceiveChannel[JobEvent]) -> None:
        async with events:
            async for event in events:
                if event.action == "in_progress":
                    await self._job_running(event.job_id, event.runner_name)
                else:
                    await self._job_completed(event.job_id, event.runner_name)

    def _waiting_runner_for(self, job_id: int) -> Runner | None:
        return next((r for r in self._runners.values() if r.waiting and r.made_for == job_id), None)

    async def _job_running(self, job_id: int, runner_name: str | None) -> None:
        runner = self._runners.get(runner_name or "")
        if runner is None:
            return  # not one of ours (another host's, or a hand-installed runner)
        if runner.running_job == job_id:
            return  # duplicate
        if runner.waiting:
            runner.move(RunnerState.BUSY, now=self._clock())
        runner.running_job = job_id
        if runner.made_for != job_id:
            await self._reassociate(runner, job_id)
        runner.made_for = job_id
        runner.lease = None  # the queue dropped the lease when the job started running
        log.info("job running job=%s runner=%s", job_id, runner.name)

    async def _reassociate(self, thief: Runner, stolen: int) -> None:
        """``thief`` took ``stolen`` instead of the job it was made for (DESIGN §1)."""
        orphan_lease = thief.lease
        other = self._waiting_runner_for(stolen)
        if other is not None:
            other.made_for = thief.made_for
            other.lease = orphan_lease
            log.info(
                "runner %s now waits for job %s (runner %s took job %s)",
                other.name,
                thief.made_for,
                thief.name,
                stolen,
            )
        elif orphan_lease is not None:
            with contextlib.suppress(StaleLease):
                await self._queue.release(orphan_lease)
            self._on_capacity()

    async def _job_completed(self, job_id: int, runner_name: str | None) -> None:
        runner = self._runners.get(runner_name or "")
        if runner is not None:
            if runner.running_job != job_id:
                await self._job_running(job_id, runner.name)  # in_progress lost or late
            if runner.state is RunnerState.BUSY:
                runner.move(RunnerState.FINISHED, now=self._clock())
            if runner.name in self._exited_at:
                await self._retire(runner)
            return
        waiting = self._waiting_runner_for(job_id)
        if waiting is not None:
            # The job ended without running here (cancelled on GitHub): its runner is surplus.
            waiting.lease = None
            await self._scale_down(waiting, reason=f"job {job_id} completed elsewhere")

    # -- Docker events --------------------------------------------------------------------

    async def _watch_docker(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Follow container events for as long as the service runs, reconnecting after errors."""
        since: int | None = None
        delay = 1.0
        started = False
        while True:
            try:
                async with self._docker.events(since=since) as events:
                    if not started:
                        task_status.started()
                        started = True
                    async for event in events:
                        since = event.time_nano // 1_000_000_000
                        delay = 1.0
                        await self._container_event(event)
            except DockerError as exc:
                log.warning("docker events stream failed: %s", exc)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(delay)
            delay = min(EVENTS_RETRY_MAX, delay * 2)

    async def _container_event(self, event: ContainerEvent) -> None:
        if event.action == "oom":
            name = self._by_container.get(event.container_id)
            if name is not None:
                self._runners[name].reason = "out of memory (the pool's memory limit was reached)"
            return
        if event.action != "die":
            return
        name = self._by_container.get(event.container_id)
        runner = self._runners.get(name or "")
        if runner is None:
            return
        runner.exit_code = event.exit_code
        self._exited_at[runner.name] = self._clock()
        if runner.state in (RunnerState.BUSY, RunnerState.FINISHED, RunnerState.FAILED):
            await self._retire(runner)
        # A runner that exits while waiting may have run a job whose webhooks are still on
        # their way; the maintenance pass gives it exit_settle seconds before calling it a
        # failure.

    # -- maintenance ----------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            await trio.sleep(MAINTENANCE_INTERVAL)
            now = self._clock()
            for runner in list(self._runners.values()):
                await self._check(runner, now)

    async def _check(self, runner: Runner, now: float) -> None:
        pool = self._live.current.pool(runner.pool)
        exited = self._exited_at.get(runner.name)
        if runner.waiting and exited is not None and now - exited >= self._exit_settle:
            code = runner.exit_code
            await self._fail(runner, f"runner exited (code {code}) before taking a job")
            return
        if runner.lease is not None and runner.lease.expires_at - now < self._lease_seconds / 2:
            try:
                runner.lease = await self._queue.heartbeat(
                    runner.lease, lease_seconds=self._lease_seconds
                )
            except StaleLease:
                runner.lease = None
            except QueueError as exc:
                log.warning("heartbeat failed runner=%s: %s", runner.name, exc)
        if pool is None:
            return
        if (
            runner.state is RunnerState.IDLE
            and exited is None
            and now - runner.state_since > pool.bootstrap_timeout
        ):
            await self._scale_down(
                runner,
                reason=f"runner took no job within bootstrap_timeout ({pool.bootstrap_timeout:g}s)",
                failure=True,
            )
        elif (
            runner.state is RunnerState.BUSY
            and exited is None
            and now - runner.state_since > pool.job_timeout
            and runner.container_id is not None
        ):
            log.warning("job_timeout reached runner=%s job=%s", runner.name, runner.running_job)
            runner.reason = f"job exceeded job_timeout ({pool.job_timeout:g}s)"
            try:
                await self._docker.stop(runner.container_id, grace=pool.stop_grace)
            except DockerError as exc:
                log.warning("stopping runner=%s failed: %s", runner.name, exc)

    @property
    def _lease_seconds(self) -> float:
        return self._live.current.queue.lease

    # -- removal --------------------------------------------------------------------------

    async def _scale_down(self, runner: Runner, *, reason: str, failure: bool = False) -> None:
        """Remove a waiting runner: GitHub registration first, then the container."""
        if runner.runner_id is not None:
            try:
                outcome = await self._github.delete_runner(
                    runner.target, runner.runner_id, installation_id=runner.installation_id
                )
            except GitHubError as exc:
                log.warning("deregistering runner=%s failed: %s", runner.name, exc)
                return  # try again on the next pass
            if outcome is DeleteOutcome.BUSY:
                log.info("runner %s just took a job; leaving it alone", runner.name)
                return
            runner.runner_id = None
        log.info("removing runner=%s: %s", runner.name, reason)
        if failure:
            await self._fail(runner, reason)
        else:
            runner.move(RunnerState.REMOVED, now=self._clock())
            await self._remove_container(runner)
            self._forget(runner)

    async def _fail_lease(self, lease: Lease, reason: str) -> None:
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
        self._on_capacity()

    async def _fail(self, runner: Runner, reason: str) -> None:
        """gantryd could not serve the job with this runner: count it against the job."""
        runner.reason = runner.reason or reason
        if runner.state is not RunnerState.FAILED:
            runner.move(RunnerState.FAILED, now=self._clock())
        log.warning("runner failed runner=%s job=%s: %s", runner.name, runner.made_for, reason)
        if runner.lease is not None:
            lease, runner.lease = runner.lease, None
            await self._fail_lease(lease, runner.reason)
        await self._retire(runner)

    async def _retire(self, runner: Runner) -> None:
        """The runner is done with (job finished, or failed): drop registration and container."""
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
        await self._remove_container(runner)
        self._forget(runner)

    async def _remove_container(self, runner: Runner) -> None:
        if runner.container_id is None:
            return
        try:
            await self._docker.remove(runner.container_id)
        except DockerError as exc:
            log.warning("removing container of runner=%s failed: %s", runner.name, exc)

    def _forget(self, runner: Runner) -> None:
        self._runners.pop(runner.name, None)
        self._exited_at.pop(runner.name, None)
        if runner.container_id is not None:
            self._by_container.pop(runner.container_id, None)
        self._changed.set()
        self._changed = trio.Event()
        self._on_capacity()
