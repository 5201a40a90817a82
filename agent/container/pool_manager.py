"""The pool supervisor: this host's runners, their warm pool, and what Docker says of them.

It owns the ``Registry`` of every ``Runner`` of this host and wires the helpers that act on
them: ``provisioning`` (bring one up), ``assignment`` (job events from intake), ``removal``
(scale-down, failure, retirement), ``adoption`` (what a previous run left) and ``gc``. It
handles Docker's events itself (a container died, was OOM-killed); ``maintenance`` runs the
one-second pass (lease heartbeats, the timeouts ``policy`` decides, warm-pool refill) and stops
runners ``disk`` finds past their pool's ``disk_limit``; ``runner_groups`` knows which
repositories an organization pool can never serve.

Demand (docs/design.md §1): a JIT runner takes any queued job its labels cover within its
registration scope. So a claimed job offered by the scheduler (``place``) first goes to a
*warm* runner (waiting, made for no job) whose scope covers it; only when none exists is a
container created, and each waiting runner is tied to at most one claimed job: runners waiting
per (scope, labels) never exceed the jobs queued there. What may start is ``capacity``'s
answer; a job that does not fit now is handed back (``Placement.NO_ROOM``) and the scheduler
holds its lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping

import trio

from agent.config import PoolConfig, Scope
from agent.container import capacity, dind
from agent.container.adoption import adopt
from agent.container.assignment import Assignments
from agent.container.capacity import Placement
from agent.container.disk import watch_disk
from agent.container.docker_api import RUNNER_LABEL, ContainerEvent, DockerAPI, DockerError
from agent.container.events import JobEvent
from agent.container.gc import collect_garbage
from agent.container.images import Images
from agent.container.lifecycle import (
    NullObserver,
    Outcome,
    PoolObserver,
    PoolStats,
    Runner,
    RunnerState,
    StartKind,
)
from agent.container.maintenance import Maintenance
from agent.container.monitoring import DockerHealth, watch_events
from agent.container.provisioning import JitSource, Provisioner
from agent.container.registry import Registry
from agent.container.removal import Removal
from agent.container.runner_groups import RunnerGroups
from agent.container.runner_spec import new_runner
from agent.container.store import JobUsage, RunnerStore
from agent.github.client import GitHubClient, RunnerTarget
from agent.github.runners import sweep_offline_runners
from agent.queue.base import JobQueue, JobSpec, Lease
from agent.reload import LiveConfig
from agent.secrets import SecretStore

log = logging.getLogger(__name__)


def covers(runner: Runner, spec: JobSpec) -> bool:
    """GitHub's rule: the runner's scope covers the job's repository (labels matched by pool)."""
    target = runner.target
    if target.repository is not None:
        return target.repository.lower() == spec.repository.lower()
    return (target.organization or "").lower() == spec.owner.lower()


class PoolManager:
    """Runner containers of this host: provisioning, association with jobs, cleanup.

    ``run`` is the long-lived service; ``place`` may be called once it has started.
    ``stats`` and ``health`` are plain objects a metrics module reads; ``observer`` hears of
    container starts and of jobs starting and ending as they happen. ``provisioning`` bounds
    how many runners are brought up at once (``scheduler.concurrency`` at start).
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
        jit_sources: Mapping[str, JitSource] | None = None,
        fleet_sweep: Callable[[], Awaitable[Collection[str] | None]] | None = None,
    ) -> None:
        # In a fleet: the dead hosts' instances when this host holds the sweep lease, else None.
        self.fleet_sweep = fleet_sweep
        self._live = live
        self._queue = queue
        self._github = github
        self._docker = docker
        self._store = store
        self._instance = instance
        self._on_capacity = on_capacity
        self._clock = clock
        self._host_memory = capacity.host_memory() if host_memory is None else host_memory
        self._observer = observer or NullObserver()
        self._nursery: trio.Nursery | None = None
        self.stats = PoolStats()
        self.health = DockerHealth()
        self.provisioning = trio.CapacityLimiter(live.current.scheduler.concurrency)
        self._registry = Registry(store, self.stats)
        self._images = Images(docker, self.stats, clock)
        self._groups = RunnerGroups(live=live, github=github, registry=self._registry)
        self._removal = Removal(
            registry=self._registry,
            queue=queue,
            github=github,
            docker=docker,
            store=store,
            stats=self.stats,
            observer=self._observer,
            clock=clock,
            on_capacity=on_capacity,
        )
        self._provisioner = Provisioner(
            github=github,
            docker=docker,
            registry=self._registry,
            removal=self._removal,
            images=self._images,
            secrets=secrets,
            stats=self.stats,
            observer=self._observer,
            clock=clock,
            instance=instance,
            limiter=self.provisioning,
            jit_sources=jit_sources,
        )
        self._assignments = Assignments(
            live=live,
            queue=queue,
            registry=self._registry,
            removal=self._removal,
            observer=self._observer,
            clock=clock,
            refill=self._ensure_min_idle,
        )
        self._maintenance = Maintenance(
            live=live,
            queue=queue,
            docker=docker,
            registry=self._registry,
            removal=self._removal,
            assignments=self._assignments,
            images=self._images,
            groups=self._groups,
            stats=self.stats,
            health=self.health,
            clock=clock,
            exit_settle=exit_settle,
            on_capacity=on_capacity,
            refill=self._ensure_min_idle,
        )

    def set_provisioning_limit(self, total: int) -> None:
        """Runners provisioned in parallel (``scheduler.concurrency``); a reload calls it."""
        self.provisioning.total_tokens = total

    # -- queries --------------------------------------------------------------------------

    @property
    def unreachable(self) -> dict[str, dict[str, str]]:
        """Organization pools: repositories their runner group never admits -> why (§3.5)."""
        return self._groups.unreachable

    def runners(self) -> list[Runner]:
        return list(self._registry)

    def _limits(self) -> capacity.HostLimits:
        return capacity.host_limits(self._live.current.scheduler, self._host_memory)

    def free_slots(self, pool: PoolConfig) -> int:
        """How many jobs of this pool may be claimed now (``capacity.free_slots``). Zero while
        the Docker Engine is unreachable: a claim then would only burn a retry."""
        if not self.health.available or pool.name in self.stats.outdated:
            return 0
        return capacity.free_slots(pool, self._registry.live(), self._limits())

    def pool_notes(self, pool: str) -> tuple[str, ...]:
        """What a person must know of a pool (status): why it is held, what it never serves."""
        held = self.hold_reason(pool)
        missing = self._groups.missing.get(pool)
        never = self.unreachable.get(pool, {})
        return (
            ((f"HELD: {held}",) if held else ())
            + ((f"NO GROUP: {missing}",) if missing else ())
            + tuple(f"never serves {repo}: {reason}" for repo, reason in sorted(never.items()))
        )

    def hold_reason(self, pool: str) -> str | None:
        """Why this pool takes no job now (its jobs stay queued), for status and reports."""
        outdated = self.stats.outdated.get(pool)
        if outdated is None:
            return None
        return (
            f"image {outdated.image} is outdated: GitHub refused its runner version (exit 7);"
            " jobs are held until the image is refreshed (pull or build a newer one)"
        )

    def _may_start(self, pool: PoolConfig, repository: str | None) -> bool:
        if pool.name in self.stats.outdated:
            return False
        return capacity.may_start(pool, repository, self._registry.live(), self._limits())

    async def usage(self, job_id: int) -> JobUsage | None:
        """Peak memory, CPU seconds and OOM of the runner that ran ``job_id`` (the reporter's)."""
        return await self._store.usage(job_id)

    async def wait_no_runners(self) -> None:
        """Return once this host has no runner left (drain, demo, tests); caller bounds it."""
        while self._registry:
            await self._registry.wait_changed()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, re-checked at every change of a runner or of
        ``stats``; the caller bounds the wait."""
        while not condition():
            await self._registry.wait_changed()

    async def wait_changed(self) -> None:
        """Return at the next change (for conditions that need an await to check)."""
        await self._registry.wait_changed()

    # -- service --------------------------------------------------------------------------

    async def run(
        self,
        job_events: trio.MemoryReceiveChannel[JobEvent],
        on_job_taken: Callable[[int], None] = lambda job_id: None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Adopt what a previous run left, then keep runners in order until cancelled.

        ``on_job_taken`` hears of each job an event says GitHub gave out or ended (the
        scheduler lets go of a lease it holds for it). The event stream is opened before
        adoption looks at Docker, so no exit is missed in between; garbage collection runs
        once adoption knows every runner.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._watch_docker)
            await adopt(
                store=self._store,
                docker=self._docker,
                queue=self._queue,
                github=self._github,
                registry=self._registry,
                removal=self._removal,
                assignments=self._assignments,
                stats=self.stats,
                instance=self._instance,
                clock=self._clock,
            )
            await self.collect_garbage()
            nursery.start_soon(self._assignments.consume, job_events, on_job_taken)
            nursery.start_soon(self._maintenance.run)
            nursery.start_soon(self._maintenance.sample_usage)
            nursery.start_soon(
                watch_disk, self._docker, self.runners, self._pool, self._maintenance.stop_over_disk
            )
            nursery.start_soon(self._gc_loop)
            task_status.started()

    def place(self, lease: Lease) -> Placement:
        """Give this claimed job a waiting warm runner, or count a new runner for it at once
        and create it in the background; NO_ROOM when its pool or repository is full (the
        caller keeps the lease and offers it again)."""
        assert self._nursery is not None, "PoolManager.run has not started"
        spec = lease.job.spec
        pool = self._live.current.pool(spec.pool)
        if pool is None:
            reason = f"pool {spec.pool!r} no longer exists"
            self._nursery.start_soon(self._removal.fail_lease, lease, reason)
            return Placement.DROPPED
        if self._registry.runs(spec.job_id):
            return Placement.DROPPED  # in_progress came first: the lease is stale
        never = self.unreachable.get(pool.name, {}).get(spec.repository.lower())
        if pool.scope is Scope.ORGANIZATION and never is not None:
            reason = f"pool {pool.name!r} can never serve {spec.repository}: {never}"
            self._nursery.start_soon(self._removal.refuse_lease, lease, reason)
            return Placement.DROPPED
        now = self._clock()
        warm = next(
            (
                r
                for r in self._registry
                if r.pool == pool.name and r.warm and r.exited_at is None and covers(r, spec)
            ),  # an exited one only waits out exit_settle
            None,
        )
        if warm is not None:
            warm.assign(spec.job_id, lease, repository=spec.repository, now=now)
            self.stats.outcomes[Outcome.WARM_HIT] += 1
            if warm.state is RunnerState.IDLE:  # else counted cold once its container runs
                self._observer.container_started(pool.name, StartKind.WARM, self._clock() - now)
            log.info("job %s goes to warm runner %s", spec.job_id, warm.name)
            self._registry.note_peaks(warm)
            self._nursery.start_soon(self._registry.save, warm)
            self._ensure_min_idle(pool)
            return Placement.WARM
        if not self._may_start(pool, spec.repository):
            return Placement.NO_ROOM
        if pool.scope is Scope.REPOSITORY:
            target = RunnerTarget(repository=spec.repository)
        else:
            target = RunnerTarget(organization=spec.owner)
        runner = self._new_runner(pool, target, spec.installation_id)
        runner.assign(spec.job_id, lease, repository=spec.repository, now=now)
        self._registry.add(runner)
        self._nursery.start_soon(self._provisioner.provision, runner, pool)
        return Placement.STARTED

    def _new_runner(
        self, pool: PoolConfig, target: RunnerTarget, installation_id: int | None
    ) -> Runner:
        return new_runner(
            pool,
            target,
            installation_id,
            prefix=self._live.current.github.runner_prefix,
            instance=self._instance,
            now=self._clock(),
        )

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
            warm = [r for r in self._registry if r.pool == pool.name and r.warm]
            if len(warm) >= pool.min_idle:
                return
            target = min(targets, key=lambda t: sum(1 for r in warm if r.target == t))
            if not self._may_start(pool, target.repository):
                return
            runner = self._new_runner(pool, target, None)
            self._registry.add(runner)
            self._nursery.start_soon(self._provisioner.provision, runner, pool)

    # -- Docker events --------------------------------------------------------------------

    async def _watch_docker(self, *, task_status: trio.TaskStatus[None]) -> None:
        await watch_events(
            self._docker,
            self._container_event,
            health=self.health,
            on_connected=self._resync,
            instance=self._instance,
            task_status=task_status,
        )

    async def _container_event(self, event: ContainerEvent) -> None:
        runner = self._registry.by_container(event.container_id)
        if runner is None:
            self._sidecar_event(event)
            return
        if event.action == "oom":
            if not runner.oom_killed:
                runner.oom_killed = True
                self.stats.outcomes[Outcome.OOM_KILLED] += 1
                self._registry.notify()
                log.warning("runner %s: a process was killed for lack of memory", runner.name)
            runner.reason = "out of memory (the pool's memory limit was reached)"
            return
        if event.action in ("die", "destroy"):
            if event.exit_code is not None:
                runner.exit_code = event.exit_code
            await self._exited(runner)

    def _sidecar_event(self, event: ContainerEvent) -> None:
        """A runner's Docker daemon died while the runner lived: its job's Docker steps fail
        (GitHub reports them); counted, and said in the runner's record."""
        if event.action != "die" or event.labels.get(dind.ROLE_LABEL) != dind.SIDECAR_ROLE:
            return
        runner = self._registry.get(event.labels.get(RUNNER_LABEL, ""))
        live = (RunnerState.IDLE, RunnerState.BUSY)  # while starting, the provisioner reports
        if runner is None or runner.state not in live or runner.retiring or runner.exited_at:
            return
        self.stats.outcomes[Outcome.DIND_FAILED] += 1
        runner.reason = runner.reason or f"its Docker daemon exited ({event.exit_code})"
        log.warning("runner %s: its Docker daemon exited (%s)", runner.name, event.exit_code)

    async def _exited(self, runner: Runner) -> None:
        if not runner.mark_exited(self._clock()):
            return
        if runner.state in (RunnerState.BUSY, RunnerState.FINISHED, RunnerState.FAILED):
            await self._removal.retire(runner)
        # A runner that exits while waiting may have run a job whose webhooks are still on
        # their way; the maintenance pass gives it exit_settle seconds before calling it a
        # failure.

    async def _resync(self) -> None:
        """Docker (re)connected: any runner whose container is no longer running has exited,
        whether or not its event reached us while the Engine was unreachable; and the scheduler
        may claim again (``free_slots`` gave nothing while it was away)."""
        self._on_capacity()
        if not self._registry:
            return
        running = {
            c.id
            for c in await self._docker.list_managed(instance=self._instance)
            if c.state in ("running", "restarting", "paused")
        }
        settled = (RunnerState.IDLE, RunnerState.BUSY, RunnerState.FINISHED)
        for runner in self._registry:
            if runner.state in settled and runner.container_id not in running:
                await self._exited(runner)

    def _pool(self, name: str) -> PoolConfig | None:
        return self._live.current.pool(name)  # read at each use: a reload applies at once

    # -- garbage collection ---------------------------------------------------------------

    async def _gc_loop(self) -> None:
        """Every gc_interval: leftover registrations at GitHub, then leftover Docker objects
        (the first registration sweep right at start; Docker's ran before started()).

        In a fleet (``fleet_sweep``) the first sweep is this host's own, as always (its
        crash's leftovers); later ones run only on the holder of the sweep lease, over its own
        and the dead hosts' registrations."""
        dead: Collection[str] | None = ()  # None: another host sweeps this time
        while True:
            if dead is not None:
                await self.sweep_registrations(dead=dead)
            await trio.sleep(self._live.current.scheduler.gc_interval)
            if self.fleet_sweep is not None:
                dead = await self.fleet_sweep()
            await self._groups.check()  # a group changed at GitHub, or an error before
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
        targets += [r.target for r in self._registry]
        return list(dict.fromkeys(targets))

    async def sweep_registrations(self, *, dead: Collection[str] = ()) -> int:
        """Delete this host's offline runner registrations that no runner here owns (made
        before a crash could record them, or whose container vanished), and those of the
        ``dead`` hosts' instances; returns how many."""
        result = await sweep_offline_runners(
            self._github,
            self._sweep_targets(),
            self._live.current.github.runner_prefix,
            self._instance,
            tracks=lambda name: self._registry.get(name) is not None,  # asked after each list
            dead=dead,
        )
        for error in result.errors:
            log.warning("registration sweep: %s", error)
        self.stats.outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] += len(result.deleted)
        self._registry.notify()
        return len(result.deleted)

    async def collect_garbage(self) -> int:
        """One GC pass over this instance's Docker objects; returns how many were removed."""
        collected = await collect_garbage(
            self._docker,
            instance=self._instance,
            known=self._registry.names(),
            now=self._clock(),
        )
        self.stats.outcomes[Outcome.GC_REMOVED] += collected.total
        return collected.total
