"""The pool supervisor: warm runners, runners for claimed jobs, their cleanup, and adoption.

It owns every ``Runner`` of this host. Inputs: leases handed over by the scheduler
(``provision_soon``), job events from intake (``in_progress`` / ``completed`` naming a runner),
Docker events (a container died, was OOM-killed) and a one-second maintenance pass (timeouts,
lease heartbeats, warm-pool refill). Every runner is written to the local state database before
GitHub hears of it, so a restarted gantryd adopts running containers and deletes registrations
whose container is gone (``_adopt``).

Demand (DESIGN §1): a JIT runner takes any queued job its labels cover within its registration
scope. So a claimed job first goes to a *warm* runner (waiting, made for no job) whose scope
covers it; only when none exists is a container created, and each waiting runner is tied to at
most one claimed job: runners waiting per (scope, labels) never exceed the jobs queued there.
When GitHub gives a runner another job than the one it was made for, the job it was made for
takes over the waiting runner of the job it stole, or goes back to the queue.

Capacity: the global and per-pool ``max_runners``, the per-repository ``max_concurrent``, and
the host memory budget (the memory limits of live runners together at most
``host_memory_share`` of the host's memory). A claimed job that does not fit is *parked*
(its lease kept alive) until a runner of its repository goes away.

Removal order is GitHub first, then Docker (reference §4): deleting the registration of an idle
runner fails with 422 when a job was just assigned to it, and then the container is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable

import trio

from agent.config import PoolConfig, Scope
from agent.container.docker_api import (
    EXPIRES_LABEL,
    INSTANCE_LABEL,
    MANAGED_LABEL,
    RUNNER_LABEL,
    ContainerEvent,
    ContainerSpec,
    DockerAPI,
    DockerError,
)
from agent.container.events import JobEvent
from agent.container.gc import collect_garbage
from agent.container.lifecycle import (
    DEAD,
    LIVE_STATES,
    NullObserver,
    Outcome,
    PoolObserver,
    PoolStats,
    Runner,
    RunnerState,
    StartKind,
    job_outcome,
)
from agent.container.monitoring import DockerHealth, watch_events
from agent.container.secret_injection import WRITE_SECRETS, injection, with_secrets_mount
from agent.container.security import host_options
from agent.container.store import JobUsage, RunnerStore, StoredRunner
from agent.github.client import DeleteOutcome, GitHubClient, GitHubError, RunnerTarget
from agent.github.runners import sweep_offline_runners
from agent.queue.base import JobQueue, JobSpec, JobState, Lease, QueueError, StaleLease
from agent.reload import LiveConfig
from agent.secrets import SecretsError, SecretStore

log = logging.getLogger(__name__)

# The runner reads its JIT config from stdin, so it never shows in `docker inspect` (Env/Cmd);
# the official image's run.sh then reads ACTIONS_RUNNER_INPUT_JITCONFIG and unsets it.
RUNNER_COMMAND = (
    "/bin/sh",
    "-c",
    "read -r ACTIONS_RUNNER_INPUT_JITCONFIG && export ACTIONS_RUNNER_INPUT_JITCONFIG"
    f" && {WRITE_SECRETS} && exec /home/runner/run.sh",  # secrets: files on a tmpfs
)
MAINTENANCE_INTERVAL = 1.0  # seconds between heartbeat/timeout/refill passes
STATS_INTERVAL = 2.0  # seconds between usage samples of busy runners
MAX_PARKED = 64  # claimed jobs per pool held while their repository is at max_concurrent
EXPIRY_SLACK = 600.0  # seconds past every timeout before GC may call a container expired


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0  # unknown: no memory budget


def _covers(runner: Runner, spec: JobSpec) -> bool:
    """GitHub's rule: the runner's scope covers the job's repository (labels matched by pool)."""
    target = runner.target
    if target.repository is not None:
        return target.repository.lower() == spec.repository.lower()
    return (target.organization or "").lower() == spec.owner.lower()


class PoolManager:
    """Runner containers of this host: provisioning, association with jobs, cleanup.

    ``run`` is the long-lived service; ``provision_soon`` may be called once it has started.
    ``stats`` and ``health`` are plain objects a metrics module reads; ``observer`` hears of
    container starts and of jobs starting and ending as they happen.
    """

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        github: GitHubClient,
        docker: DockerAPI,
        store: RunnerStore,
        instance: str,
        on_capacity: Callable[[], None] = lambda: None,
        exit_settle: float = 30.0,
        clock: Callable[[], float] = time.time,
        host_memory: int | None = None,
        secrets: SecretStore | None = None,
        observer: PoolObserver | None = None,
    ) -> None:
        self._secrets = secrets
        self._observer = observer or NullObserver()
        self._live = live
        self._queue = queue
        self._github = github
        self._docker = docker
        self._store = store
        self._instance = instance
        self._on_capacity = on_capacity
        self._exit_settle = exit_settle  # how long a runner that exited idle waits for a webhook
        self._clock = clock
        self._host_memory = _host_memory() if host_memory is None else host_memory
        self._runners: dict[str, Runner] = {}
        self._by_container: dict[str, str] = {}
        self._exited_at: dict[str, float] = {}
        self._retiring: set[str] = set()
        self._parked: dict[str, list[Lease]] = {}  # pool -> leases waiting for a repository slot
        # job -> (pool, in_progress time) for jobs our runners run: their duration is measured
        # at `completed`, which may come after the runner (and its record) is gone.
        self._running: dict[int, tuple[str, float]] = {}
        self._pull_locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()  # set and replaced whenever a runner or a count changes
        self._provisioning = trio.CapacityLimiter(live.current.scheduler.concurrency)
        self.stats = PoolStats()
        self.health = DockerHealth()

    # -- queries --------------------------------------------------------------------------

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    def _live_runners(self) -> list[Runner]:
        return [r for r in self._runners.values() if r.state in LIVE_STATES]

    def free_slots(self, pool: PoolConfig) -> int:
        """How many jobs of this pool may be claimed now: room for new runners under the global,
        pool and memory caps, plus warm runners waiting to take a job without a new container.
        Zero while the Docker Engine is unreachable: a claim then would only burn a retry."""
        if not self.health.available:
            return 0
        live = self._live_runners()
        in_pool = [r for r in live if r.pool == pool.name]
        room = min(
            pool.max_runners - len(in_pool),
            self._live.current.scheduler.max_runners - len(live),
            self._memory_room(pool, live),
        )
        # Jobs of a repository at max_concurrent get parked, not started, so they never take
        # room from other repositories' jobs.
        return max(0, room) + sum(1 for r in in_pool if r.warm)

    def _memory_room(self, pool: PoolConfig, live: list[Runner]) -> int:
        if not self._host_memory:
            return pool.max_runners
        budget = int(self._host_memory * self._live.current.scheduler.host_memory_share)
        return (budget - sum(r.memory for r in live)) // pool.memory

    def _may_start(self, pool: PoolConfig, repository: str | None) -> bool:
        live = self._live_runners()
        if (
            len(live) >= self._live.current.scheduler.max_runners
            or sum(1 for r in live if r.pool == pool.name) >= pool.max_runners
            or self._memory_room(pool, live) < 1
        ):
            return False
        if pool.max_concurrent and repository is not None:
            here = sum(1 for r in live if r.pool == pool.name and r.repository == repository)
            return here < pool.max_concurrent
        return True

    async def usage(self, job_id: int) -> JobUsage | None:
        """Peak memory, CPU seconds and OOM of the runner that ran ``job_id`` (the reporter's)."""
        return await self._store.usage(job_id)

    async def wait_no_runners(self) -> None:
        """Return once this host has no runner left (drain, demo, tests); caller bounds it."""
        while self._runners:
            await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, re-checked at every change of a runner or of
        ``stats``; the caller bounds the wait."""
        while not condition():
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Return at the next change (for conditions that need an await to check)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- service --------------------------------------------------------------------------

    async def run(
        self,
        job_events: trio.MemoryReceiveChannel[JobEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Adopt what a previous run left, then keep runners in order until cancelled.

        The event stream is opened before adoption looks at Docker, so no exit is missed in
        between; garbage collection runs once adoption knows every runner.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._watch_docker)
            await self._adopt()
            await self.collect_garbage()
            nursery.start_soon(self._consume_job_events, job_events)
            nursery.start_soon(self._maintain)
            nursery.start_soon(self._sample_usage)
            nursery.start_soon(self._gc_loop)
            task_status.started()

    def provision_soon(self, lease: Lease) -> None:
        """Give this claimed job a waiting warm runner, or count a new runner for it at once
        and create it in the background; park it if its repository is at its cap."""
        assert self._nursery is not None, "PoolManager.run has not started"
        spec = lease.job.spec
        pool = self._live.current.pool(spec.pool)
        if pool is None:
            self._nursery.start_soon(
                self._fail_lease, lease, f"pool {spec.pool!r} no longer exists"
            )
            return
        if any(r.running_job == spec.job_id for r in self._runners.values()):
            return  # in_progress already came: GitHub gave it to a runner, the lease is stale
        now = self._clock()
        warm = next(
            (
                r
                for r in self._runners.values()
                if r.pool == pool.name and r.warm and _covers(r, spec)
            ),
            None,
        )
        if warm is not None:
            warm.made_for, warm.lease, warm.assigned_at = spec.job_id, lease, now
            warm.repository = spec.repository
            self.stats.outcomes[Outcome.WARM_HIT] += 1
            if warm.state is RunnerState.IDLE:  # else counted cold once its container runs
                self._observer.container_started(pool.name, StartKind.WARM, self._clock() - now)
            log.info("job %s goes to warm runner %s", spec.job_id, warm.name)
            self._note_peaks(warm)
            self._nursery.start_soon(self._persist, warm)
            self._ensure_min_idle(pool)
            return
        if not self._may_start(pool, spec.repository):
            parked = self._parked.setdefault(pool.name, [])
            if len(parked) < MAX_PARKED:
                parked.append(lease)
            else:
                self._nursery.start_soon(self._release, lease)
            return
        if pool.scope is Scope.REPOSITORY:
            target = RunnerTarget(repository=spec.repository)
        else:
            target = RunnerTarget(organization=spec.owner)
        runner = self._new_runner(pool, target, spec.installation_id)
        runner.made_for, runner.lease, runner.assigned_at = spec.job_id, lease, now
        runner.repository = spec.repository
        self._add(runner)
        self._nursery.start_soon(self._provision, runner, pool)

    def _new_runner(
        self, pool: PoolConfig, target: RunnerTarget, installation_id: int | None
    ) -> Runner:
        prefix = self._live.current.github.runner_prefix
        now = self._clock()
        return Runner(
            name=f"{prefix}-{self._instance}-{secrets.token_hex(4)}",
            pool=pool.name,
            target=target,
            installation_id=installation_id,
            labels=pool.labels,
            created_at=now,
            state_since=now,
            memory=pool.memory,
            repository=target.repository,
        )

    def _add(self, runner: Runner) -> None:
        self._runners[runner.name] = runner
        self._note_peaks(runner)

    def _note_peaks(self, runner: Runner) -> None:
        live = self._live_runners()
        self.stats.peak_runners = max(self.stats.peak_runners, len(live))
        if runner.repository is not None:
            here = sum(1 for r in live if r.repository == runner.repository)
            peaks = self.stats.peak_by_repository
            peaks[runner.repository] = max(peaks.get(runner.repository, 0), here)

    async def _persist(self, runner: Runner) -> None:
        """Write the runner's row; a failure is logged (the next change writes it again)."""
        self._notify()
        if runner.name not in self._runners:
            return
        try:
            await self._store.save(runner)
        except QueueError as exc:
            log.error("state database: cannot save runner %s: %s", runner.name, exc)

    # -- warm pool ------------------------------------------------------------------------

    def _warm_targets(self, pool: PoolConfig) -> list[RunnerTarget]:
        if pool.scope is Scope.ORGANIZATION:
            orgs = self._live.current.github.organizations
            return [RunnerTarget(organization=org) for org in orgs]
        return [RunnerTarget(repository=repo) for repo in pool.warm_repositories]

    def _ensure_min_idle(self, pool: PoolConfig) -> None:
        """Start warm runners until the pool has ``min_idle`` of them, spread over its targets."""
        assert self._nursery is not None
        targets = self._warm_targets(pool)
        while targets:
            warm = [r for r in self._runners.values() if r.pool == pool.name and r.warm]
            if len(warm) >= pool.min_idle:
                return
            target = min(targets, key=lambda t: sum(1 for r in warm if r.target == t))
            if not self._may_start(pool, target.repository):
                return
            runner = self._new_runner(pool, target, None)
            self._add(runner)
            self._nursery.start_soon(self._provision, runner, pool)

    # -- provisioning ---------------------------------------------------------------------

    async def _provision(self, runner: Runner, pool: PoolConfig) -> None:
        await self._persist(runner)  # before GitHub knows it: a crash leaves a name to clean
        async with self._provisioning:
            try:
                runner.image_digest = await self._ensure_image(pool)
                jit = await self._github.generate_jitconfig(
                    runner.target,
                    name=runner.name,
                    labels=pool.labels,
                    # 1 at repository scope; an organization's group looked up by name
                    runner_group_id=await self._github.runner_group_id(
                        runner.target, pool.runner_group, installation_id=runner.installation_id
                    ),
                    installation_id=runner.installation_id,
                )
                runner.runner_id = jit.runner_id
                await self._persist(runner)
                container_id = await self._docker.create(self._container_spec(runner, pool))
                runner.container_id = container_id
                self._by_container[container_id] = runner.name
                runner.move(RunnerState.STARTING, now=self._clock())
                frame = await injection(
                    self._secrets, pool.secrets, runner=runner.name, job=runner.made_for
                )
                await self._docker.start_with_stdin(
                    container_id, jit.encoded.reveal().encode("ascii") + b"\n" + frame
                )
            except (GitHubError, DockerError, SecretsError) as exc:
                self.stats.outcomes[Outcome.PROVISION_FAILED] += 1
                await self._fail(runner, str(exc))
                return
        self.stats.outcomes[Outcome.CREATED] += 1
        if runner.state is RunnerState.STARTING:
            runner.move(RunnerState.IDLE, now=self._clock())
        if runner.made_for is not None and runner.assigned_at is not None:
            waited = self._clock() - runner.assigned_at
            self._observer.container_started(runner.pool, StartKind.COLD, waited)
        await self._persist(runner)
        log.info(
            "runner started runner=%s pool=%s job=%s target=%s",
            runner.name,
            runner.pool,
            runner.made_for,
            runner.target.path,
        )

    async def _ensure_image(self, pool: PoolConfig) -> str:
        """Pull per ``pull_policy`` (one pull per image at a time); return the digest."""
        lock = self._pull_locks.setdefault(pool.image, trio.Lock())
        async with lock:
            policy = pool.pull_policy.value
            digest = None if policy == "always" else await self._docker.image_digest(pool.image)
            if digest is None and policy == "never":
                raise DockerError(f"image {pool.image} is not present and pull_policy is never")
            if digest is None:
                log.info("pulling image=%s pool=%s", pool.image, pool.name)
                try:
                    digest = await self._docker.pull(
                        pool.image,
                        on_progress=lambda line: log.info("pull %s: %s", pool.image, line),
                    )
                except DockerError as exc:
                    raise DockerError(f"image pull failed for {pool.image}: {exc}") from exc
                log.info("pulled image=%s digest=%s", pool.image, digest)
            self.stats.image_digests[pool.image] = digest
            return digest

    def _container_spec(self, runner: Runner, pool: PoolConfig) -> ContainerSpec:
        expires = (
            runner.created_at
            + pool.bootstrap_timeout
            + pool.max_idle_age
            + pool.job_timeout
            + pool.stop_grace
            + EXPIRY_SLACK
        )
        labels = {
            **pool.docker_labels,
            MANAGED_LABEL: "true",
            INSTANCE_LABEL: self._instance,
            "io.gantryd.pool": pool.name,
            RUNNER_LABEL: runner.name,
            "io.gantryd.job": str(runner.made_for or ""),
            "io.gantryd.created": str(int(runner.created_at)),
            EXPIRES_LABEL: str(int(expires)),
        }
        return ContainerSpec(
            name=runner.name,
            image=pool.image,
            command=RUNNER_COMMAND,
            labels=labels,
            environment=dict(pool.env),
            host=with_secrets_mount(host_options(pool), pool.secrets),
            stdin_open=True,
        )

    # -- job events -----------------------------------------------------------------------

    async def _consume_job_events(self, events: trio.MemoryReceiveChannel[JobEvent]) -> None:
        async with events:
            async for event in events:
                if event.action == "in_progress":
                    await self._job_running(event.job_id, event.runner_name)
                else:
                    await self._job_completed(event.job_id, event.runner_name, event.conclusion)

    def _waiting_runner_for(self, job_id: int) -> Runner | None:
        return next((r for r in self._runners.values() if r.waiting and r.made_for == job_id), None)

    def _unpark(self, job_id: int) -> None:
        """GitHub gave the job to a runner (maybe another host's): its parked lease is void."""
        for pool_name, parked in self._parked.items():
            self._parked[pool_name] = [lease for lease in parked if lease.job_id != job_id]

    async def _job_running(
        self, job_id: int, runner_name: str | None, *, late: bool = False
    ) -> None:
        """GitHub gave ``job_id`` to ``runner_name``; ``late``: only learnt at its completion
        (its start time is unknown, so neither its queue wait nor its duration is measured)."""
        self._unpark(job_id)
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
        await self._persist(runner)
        pool = self._live.current.pool(runner.pool)
        if pool is not None:
            self._ensure_min_idle(pool)
        log.info("job running job=%s runner=%s", job_id, runner.name)
        if not late:
            await self._job_started(job_id, runner.pool)

    async def _job_started(self, job_id: int, pool: str) -> None:
        now = self._clock()
        self._running[job_id] = (pool, now)
        try:
            entry = await self._queue.get(job_id)
        except QueueError as exc:
            log.warning("job %s: queue wait not measured: %s", job_id, exc)
            return
        if entry is not None:
            self._observer.job_started(pool, max(0.0, now - entry.enqueued_at))
            self._notify()

    def _job_ended(self, pool: str, outcome: str, duration: float | None) -> None:
        self._observer.job_ended(pool, outcome, duration)
        self._notify()

    async def _reassociate(self, thief: Runner, stolen: int) -> None:
        """``thief`` took ``stolen`` instead of the job it was made for (DESIGN §1)."""
        orphan_lease = thief.lease
        other = self._waiting_runner_for(stolen)
        if other is not None:
            other.made_for, other.lease = thief.made_for, orphan_lease
            other.assigned_at = self._clock() if thief.made_for is not None else None
            log.info(
                "runner %s now waits for job %s (runner %s took job %s)",
                other.name,
                thief.made_for,
                thief.name,
                stolen,
            )
            await self._persist(other)
        elif orphan_lease is not None:
            await self._release(orphan_lease)
            self._on_capacity()

    async def _job_completed(
        self, job_id: int, runner_name: str | None, conclusion: str | None = None
    ) -> None:
        """Each job this host served is counted once: a duplicate delivery finds neither its
        start record nor a runner that has yet to learn it ran the job."""
        self._unpark(job_id)
        started = self._running.pop(job_id, None)
        duration = None if started is None else self._clock() - started[1]
        runner = self._runners.get(runner_name or "")
        if runner is not None:
            counted = started is not None
            if runner.running_job != job_id:
                await self._job_running(job_id, runner.name, late=True)  # in_progress lost
                counted = True
            if counted:
                self._job_ended(runner.pool, job_outcome(conclusion), duration)
            if runner.state is RunnerState.BUSY:
                runner.move(RunnerState.FINISHED, now=self._clock())
                await self._persist(runner)
            if runner.name in self._exited_at:
                await self._retire(runner)
            return
        if started is not None:  # its runner ran it and exited before this webhook came
            self._job_ended(started[0], job_outcome(conclusion), duration)
            return
        waiting = self._waiting_runner_for(job_id)
        if waiting is not None:
            # The job ended without running here (cancelled on GitHub): its runner is surplus.
            self._job_ended(waiting.pool, job_outcome(conclusion), None)
            waiting.lease = None
            await self._scale_down(waiting, reason=f"job {job_id} completed elsewhere")

    # -- Docker events --------------------------------------------------------------------

    async def _watch_docker(self, *, task_status: trio.TaskStatus[None]) -> None:
        await watch_events(
            self._docker,
            self._container_event,
            health=self.health,
            on_connected=self._resync,
            task_status=task_status,
        )

    async def _container_event(self, event: ContainerEvent) -> None:
        name = self._by_container.get(event.container_id)
        runner = self._runners.get(name or "")
        if runner is None:
            return
        if event.action == "oom":
            if not runner.oom_killed:
                runner.oom_killed = True
                self.stats.outcomes[Outcome.OOM_KILLED] += 1
                self._notify()
                log.warning("runner %s: a process was killed for lack of memory", runner.name)
            runner.reason = "out of memory (the pool's memory limit was reached)"
            return
        if event.action in ("die", "destroy"):
            if event.exit_code is not None:
                runner.exit_code = event.exit_code
            await self._exited(runner)

    async def _exited(self, runner: Runner) -> None:
        if runner.name in self._exited_at:
            return
        self._exited_at[runner.name] = self._clock()
        if runner.state in (RunnerState.BUSY, RunnerState.FINISHED, RunnerState.FAILED):
            await self._retire(runner)
        # A runner that exits while waiting may have run a job whose webhooks are still on
        # their way; the maintenance pass gives it exit_settle seconds before calling it a
        # failure.

    async def _resync(self) -> None:
        """Docker (re)connected: any runner whose container is no longer running has exited,
        whether or not its event reached us while the Engine was unreachable; and the scheduler
        may claim again (``free_slots`` gave nothing while it was away)."""
        self._on_capacity()
        if not self._runners:
            return
        running = {
            c.id
            for c in await self._docker.list_managed(instance=self._instance)
            if c.state in ("running", "restarting", "paused")
        }
        settled = (RunnerState.IDLE, RunnerState.BUSY, RunnerState.FINISHED)
        for runner in list(self._runners.values()):
            if runner.state in settled and runner.container_id not in running:
                await self._exited(runner)

    # -- maintenance ----------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            await trio.sleep(MAINTENANCE_INTERVAL)
            now = self._clock()
            for runner in list(self._runners.values()):
                if runner.name in self._runners:
                    try:
                        await self._check(runner, now)
                    except (QueueError, GitHubError, DockerError) as exc:
                        log.warning(
                            "runner %s: check failed, next pass retries: %s", runner.name, exc
                        )
            await self._serve_parked()
            self._forget_unfinished(now)
            for pool in self._live.current.pools:
                if pool.min_idle and self.health.available:
                    self._ensure_min_idle(pool)

    def _forget_unfinished(self, now: float) -> None:
        """Drop start records of jobs whose ``completed`` never came (a lost delivery: the
        reconciler settles the job) once past any timeout, so the record stays bounded."""
        for job_id, (pool_name, since) in list(self._running.items()):
            pool = self._live.current.pool(pool_name)
            limit = EXPIRY_SLACK + (0.0 if pool is None else pool.job_timeout + pool.stop_grace)
            if now - since > limit:
                del self._running[job_id]

    async def _heartbeat(self, lease: Lease) -> Lease | None:
        if lease.expires_at - self._clock() >= self._lease_seconds / 2:
            return lease
        try:
            return await self._queue.heartbeat(lease, lease_seconds=self._lease_seconds)
        except StaleLease:
            return None
        except QueueError as exc:
            log.warning("heartbeat failed job=%s: %s", lease.job_id, exc)
            return lease

    async def _serve_parked(self) -> None:
        """Keep parked leases alive and hand them over once their repository has room."""
        for pool_name, parked in list(self._parked.items()):
            self._parked[pool_name] = []
            for lease in parked:
                kept = await self._heartbeat(lease)
                if kept is not None:
                    self.provision_soon(kept)  # provisions, or parks it again

    async def _check(self, runner: Runner, now: float) -> None:
        pool = self._live.current.pool(runner.pool)
        exited = self._exited_at.get(runner.name)
        if runner.waiting and exited is not None and now - exited >= self._exit_settle:
            self.stats.outcomes[Outcome.EXIT_BEFORE_JOB] += 1
            code = runner.exit_code
            await self._fail(runner, f"runner exited (code {code}) before taking a job")
            return
        if runner.lease is not None:
            runner.lease = await self._heartbeat(runner.lease)
        if pool is None or exited is not None:
            return
        if runner.state is RunnerState.IDLE and runner.made_for is not None:
            waited = now - max(runner.assigned_at or 0.0, runner.state_since)
            if waited > pool.bootstrap_timeout:
                await self._scale_down(
                    runner,
                    reason=f"runner took no job within bootstrap_timeout "
                    f"({pool.bootstrap_timeout:g}s)",
                    failure=True,
                    outcome=Outcome.BOOTSTRAP_TIMEOUT,
                )
        elif runner.warm and runner.state is RunnerState.IDLE:
            if now - runner.state_since > pool.max_idle_age:
                await self._scale_down(
                    runner,
                    reason=f"warm runner reached max_idle_age ({pool.max_idle_age:g}s)",
                    outcome=Outcome.IDLE_RECYCLED,
                )
        elif (
            runner.state is RunnerState.BUSY
            and now - runner.state_since > pool.job_timeout
            and runner.container_id is not None
            and "job_timeout" not in (runner.reason or "")  # stopped once already
        ):
            log.warning("job_timeout reached runner=%s job=%s", runner.name, runner.running_job)
            runner.reason = f"job exceeded job_timeout ({pool.job_timeout:g}s): timed_out"
            self.stats.outcomes[Outcome.JOB_TIMEOUT] += 1
            await self._persist(runner)
            try:
                await self._docker.stop(runner.container_id, grace=pool.stop_grace)
            except DockerError as exc:
                log.warning("stopping runner=%s failed: %s", runner.name, exc)

    @property
    def _lease_seconds(self) -> float:
        return self._live.current.queue.lease

    async def _sample_usage(self) -> None:
        """Sample memory and CPU of busy runners; peaks are kept per job."""
        while True:
            await trio.sleep(STATS_INTERVAL)
            for runner in list(self._runners.values()):
                if runner.state is RunnerState.BUSY and runner.container_id is not None:
                    await self._sample(runner)

    async def _sample(self, runner: Runner) -> None:
        assert runner.container_id is not None
        try:
            usage = await self._docker.stats(runner.container_id)
        except DockerError:
            return  # gone or Docker away: the event stream tells
        runner.peak_memory = max(runner.peak_memory, usage.peak_memory)
        runner.cpu_seconds = max(runner.cpu_seconds, usage.cpu_seconds)

    # -- garbage collection and adoption --------------------------------------------------

    async def _gc_loop(self) -> None:
        """Every gc_interval: leftover registrations at GitHub, then leftover Docker objects
        (the first registration sweep right at start; Docker's ran before started())."""
        while True:
            await self.sweep_registrations()
            await trio.sleep(self._live.current.scheduler.gc_interval)
            try:
                await self.collect_garbage()
            except DockerError as exc:
                log.warning("gc: Docker error, next pass in gc_interval: %s", exc)

    def _sweep_targets(self) -> list[RunnerTarget]:
        config = self._live.current
        targets = [RunnerTarget(repository=r) for r in config.github.repositories]
        targets += [RunnerTarget(organization=o) for o in config.github.organizations]
        for pool in config.pools:
            targets += self._warm_targets(pool)
        targets += [r.target for r in self._runners.values()]
        return list(dict.fromkeys(targets))

    async def sweep_registrations(self) -> int:
        """Delete this host's offline runner registrations that no runner here owns (made
        before a crash could record them, or whose container vanished); returns how many."""
        result = await sweep_offline_runners(
            self._github,
            self._sweep_targets(),
            self._live.current.github.runner_prefix,
            self._instance,
            known_names=set(self._runners),
        )
        for error in result.errors:
            log.warning("registration sweep: %s", error)
        self.stats.outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] += len(result.deleted)
        self._notify()
        return len(result.deleted)

    async def collect_garbage(self) -> int:
        """One GC pass over this instance's Docker objects; returns how many were removed."""
        collected = await collect_garbage(
            self._docker, instance=self._instance, known=set(self._runners), now=self._clock()
        )
        self.stats.outcomes[Outcome.GC_REMOVED] += collected.total
        return collected.total

    async def _adopt(self) -> None:
        """Take over the runners a previous run left: running containers keep their job;
        a registration without a container is deleted at GitHub (its lease released)."""
        stored = await self._store.load()
        if not stored:
            return
        containers = {
            c.labels.get(RUNNER_LABEL): c
            for c in await self._docker.list_managed(instance=self._instance)
        }
        now = self._clock()
        for record in stored:
            runner = record.runner
            container = containers.get(runner.name)
            runner.lease = await self._stored_lease(record)
            if (
                container is None
                or container.state == "created"
                or runner.state
                in (
                    RunnerState.REMOVED,
                    RunnerState.CREATING,
                )
            ):
                await self._drop_orphan(runner, container.id if container else None)
                continue
            runner.container_id = container.id
            self._by_container[container.id] = runner.name
            self._add(runner)
            self.stats.outcomes[Outcome.ADOPTED] += 1
            if runner.state is RunnerState.BUSY and runner.running_job is not None:
                self._running[runner.running_job] = (runner.pool, runner.state_since)
            log.info(
                "adopted runner=%s state=%s job=%s", runner.name, runner.state, runner.made_for
            )
            if container.state != "running" or runner.state is RunnerState.FAILED:
                self._exited_at[runner.name] = now
                if not runner.waiting:
                    await self._retire(runner)

    async def _stored_lease(self, record: StoredRunner) -> Lease | None:
        job_id = record.runner.made_for
        if record.lease_token is None or job_id is None or record.lease_expires is None:
            return None
        job = await self._queue.get(job_id)
        if job is None or job.state is not JobState.CLAIMED:
            return None
        return Lease(job=job, token=record.lease_token, expires_at=record.lease_expires)

    async def _drop_orphan(self, runner: Runner, container_id: str | None) -> None:
        log.info("runner %s has no running container: deleting what is left of it", runner.name)
        if runner.runner_id is not None:
            try:
                outcome = await self._github.delete_runner(
                    runner.target, runner.runner_id, installation_id=runner.installation_id
                )
            except GitHubError as exc:
                log.warning("deregistering orphan runner=%s failed: %s", runner.name, exc)
            else:
                if outcome is not DeleteOutcome.NOT_FOUND:
                    self.stats.outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] += 1
        if container_id is not None:
            with contextlib.suppress(DockerError):
                await self._docker.remove(container_id)
        if runner.lease is not None:
            await self._release(runner.lease)
        await self._store.delete(runner.name)

    # -- removal --------------------------------------------------------------------------

    async def _release(self, lease: Lease) -> None:
        """Put a claimed job back in the queue without consuming an attempt."""
        try:
            await self._queue.release(lease)
        except StaleLease:
            pass  # expired and re-claimed meanwhile: nothing of ours to give back
        except QueueError as exc:
            log.warning("releasing job %s failed (its lease will expire): %s", lease.job_id, exc)

    async def _scale_down(
        self,
        runner: Runner,
        *,
        reason: str,
        failure: bool = False,
        outcome: Outcome = Outcome.SCALE_DOWN,
    ) -> None:
        """Remove a waiting runner: GitHub registration first, then the container."""
        if runner.runner_id is not None:
            try:
                deleted = await self._github.delete_runner(
                    runner.target, runner.runner_id, installation_id=runner.installation_id
                )
            except GitHubError as exc:
                log.warning("deregistering runner=%s failed: %s", runner.name, exc)
                return  # try again on the next pass
            if deleted is DeleteOutcome.BUSY:
                self.stats.outcomes[Outcome.SCALE_DOWN_REFUSED] += 1
                self._notify()
                log.info("runner %s just took a job; leaving it alone", runner.name)
                return
            runner.runner_id = None
        self.stats.outcomes[outcome] += 1
        log.info("removing runner=%s: %s", runner.name, reason)
        if failure:
            await self._fail(runner, reason)
        else:
            runner.move(RunnerState.REMOVED, now=self._clock())
            await self._remove_container(runner)
            await self._forget(runner)

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
        if outcome.dead:
            self._job_ended(lease.job.spec.pool, DEAD, None)
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
        if runner.name in self._retiring:
            return  # its exit and its job's completion both lead here
        self._retiring.add(runner.name)
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
        await self._remove_container(runner)
        await self._forget(runner)

    async def _remove_container(self, runner: Runner) -> None:
        if runner.container_id is None:
            return
        try:
            await self._docker.remove(runner.container_id)
        except DockerError as exc:
            log.warning("removing container of runner=%s failed: %s", runner.name, exc)

    async def _forget(self, runner: Runner) -> None:
        self._runners.pop(runner.name, None)
        self._retiring.discard(runner.name)
        self._exited_at.pop(runner.name, None)
        if runner.container_id is not None:
            self._by_container.pop(runner.container_id, None)
        try:
            await self._store.delete(runner.name)
        except QueueError as exc:
            log.error("state database: cannot delete runner %s: %s", runner.name, exc)
        self._notify()
        self._on_capacity()
