"""The pool's periodic upkeep: the one-second maintenance pass and the usage sampler.

Split from the pool supervisor because it acts on runners on a clock rather than on an event:
each pass keeps leases alive, carries out what ``policy.decide`` says of each runner (fail,
scale down, end, hold an outdated image, stop at ``job_timeout``), lifts a pool's hold once its
image changed, re-checks runner groups after a reload and refills warm pools. ``stop_over_disk``
is what ``disk.watch_disk`` calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from agent.config import PoolConfig
from agent.container.assignment import Assignments
from agent.container.docker_api import DockerAPI, DockerError
from agent.container.images import Images
from agent.container.leases import keep_alive
from agent.container.lifecycle import Outcome, OutdatedImage, PoolStats, Runner, RunnerState
from agent.container.monitoring import DockerHealth
from agent.container.policy import Verdict, decide
from agent.container.registry import Registry
from agent.container.removal import Removal
from agent.container.runner_groups import RunnerGroups
from agent.github.client import GitHubError
from agent.queue.base import JobQueue, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

TIMED_OUT = "timed_out"  # the conclusion recorded (and reported) for a job stopped at job_timeout
MAINTENANCE_INTERVAL = 1.0  # seconds between heartbeat/timeout/refill passes
OUTDATED_PULL_INTERVAL = 60.0  # seconds between pulls of an image GitHub refused (exit 7)
STATS_INTERVAL = 2.0  # seconds between usage samples of busy runners


class Maintenance:
    """The periodic passes over this host's runners; ``PoolManager.run`` starts them."""

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        docker: DockerAPI,
        registry: Registry,
        removal: Removal,
        assignments: Assignments,
        images: Images,
        groups: RunnerGroups,
        stats: PoolStats,
        health: DockerHealth,
        clock: Callable[[], float],
        exit_settle: float,
        on_capacity: Callable[[], None],
        refill: Callable[[PoolConfig], None],
    ) -> None:
        self._live = live
        self._queue = queue
        self._docker = docker
        self._registry = registry
        self._removal = removal
        self._assignments = assignments
        self._images = images
        self._groups = groups
        self._stats = stats
        self._health = health
        self._clock = clock
        self._exit_settle = exit_settle  # how long a runner that exited idle waits for a webhook
        self._on_capacity = on_capacity
        self._refill = refill
        self._refreshed: dict[str, float] = {}  # pool -> when its outdated image was last pulled

    async def run(self) -> None:
        """Every MAINTENANCE_INTERVAL, one pass over every runner and pool, until cancelled."""
        while True:
            await trio.sleep(MAINTENANCE_INTERVAL)
            now = self._clock()
            for runner in self._registry:
                if runner in self._registry:
                    try:
                        await self._check(runner, now)
                    except (QueueError, GitHubError, DockerError) as exc:
                        log.warning(
                            "runner %s: check failed, next pass retries: %s", runner.name, exc
                        )
            self._assignments.forget_unfinished(now)
            await self._refresh_outdated(now)
            if self._groups.stale():  # started, or reloaded
                await self._groups.check()
            for pool in self._live.current.pools:
                if pool.min_idle and self._health.available:
                    self._refill(pool)

    async def _check(self, runner: Runner, now: float) -> None:
        """Keep the runner's lease alive, then do what ``policy.decide`` says."""
        if runner.lease is not None:
            runner.lease = await keep_alive(
                self._queue,
                runner.lease,
                lease_seconds=self._live.current.queue.lease,
                now=self._clock(),
            )
        pool = self._live.current.pool(runner.pool)
        decision = decide(runner, pool, now=now, exit_settle=self._exit_settle)
        if decision.outcome is not None and decision.verdict in (Verdict.FAIL, Verdict.STOP):
            self._stats.outcomes[decision.outcome] += 1
        if decision.verdict is Verdict.FAIL:
            await self._removal.fail(runner, decision.reason)
        elif decision.verdict is Verdict.SCALE_DOWN:
            assert decision.outcome is not None
            await self._removal.scale_down(
                runner, reason=decision.reason, failure=decision.failure, outcome=decision.outcome
            )
        elif decision.verdict is Verdict.ENDED:
            await self._removal.exited_waiting(runner, decision.reason)
        elif decision.verdict is Verdict.OUTDATED:
            if pool is not None and pool.name not in self._stats.outdated:
                self._stats.outdated[pool.name] = OutdatedImage(
                    image=pool.image, digest=runner.image_digest, since=now
                )
                log.error("pool %s: %s", pool.name, decision.reason)
            await self._removal.end(runner, decision.reason, Outcome.IMAGE_OUTDATED)
        elif decision.verdict is Verdict.STOP:
            assert pool is not None and runner.container_id is not None
            await self._stop_timed_out(runner, pool, decision.reason)

    async def _refresh_outdated(self, now: float) -> None:
        """End a pool's hold once its image changed: a reload gave it another image, or the
        image now present (pulled at most every OUTDATED_PULL_INTERVAL, looked at every pass)
        has another id than the one GitHub refused."""
        for name, outdated in list(self._stats.outdated.items()):
            pool = self._live.current.pool(name)
            if pool is not None and pool.image == outdated.image:
                if now - self._refreshed.get(name, 0.0) >= OUTDATED_PULL_INTERVAL:
                    self._refreshed[name] = now
                    digest = await self._images.refresh(pool)
                else:
                    digest = await self._docker.image_digest(pool.image)
                if digest is None or digest == outdated.digest:
                    continue  # still the refused image
            del self._stats.outdated[name]
            self._refreshed.pop(name, None)
            log.info("pool %s: image refreshed, taking jobs again", name)
            self._registry.notify()
            self._on_capacity()

    async def _stop_timed_out(self, runner: Runner, pool: PoolConfig, reason: str) -> None:
        log.warning("job_timeout reached runner=%s job=%s", runner.name, runner.running_job)
        if runner.running_job is not None:
            # Recorded first (a QueueError retries the whole stop next pass): a stopped runner
            # may never tell GitHub, so the job stayed `running` here, unreported (issue 13 §4).
            await self._queue.finish(runner.running_job, TIMED_OUT)
        runner.reason, runner.timed_out = reason, True
        await self._registry.save(runner)
        assert runner.container_id is not None
        try:
            await self._docker.stop(runner.container_id, grace=pool.stop_grace)
        except DockerError as exc:
            log.warning("stopping runner=%s failed: %s", runner.name, exc)

    async def stop_over_disk(self, runner: Runner, pool: PoolConfig, reason: str) -> None:
        """Stop a runner past its pool's ``disk_limit`` (``disk.watch_disk`` found it)."""
        log.warning("runner %s job %s: %s", runner.name, runner.running_job, reason)
        runner.reason, runner.disk_exceeded = reason, True
        self._stats.outcomes[Outcome.DISK_LIMIT] += 1
        await self._registry.save(runner)
        assert runner.container_id is not None
        try:
            await self._docker.stop(runner.container_id, grace=pool.stop_grace)
        except DockerError as exc:
            log.warning("stopping runner=%s failed: %s", runner.name, exc)

    async def sample_usage(self) -> None:
        """Sample memory and CPU of busy runners; peaks are kept per job."""
        while True:
            await trio.sleep(STATS_INTERVAL)
            for runner in self._registry:
                if runner.state is RunnerState.BUSY and runner.container_id is not None:
                    await self._sample(runner, runner.container_id, runner.sidecar_id)

    async def _sample(self, runner: Runner, container_id: str, sidecar_id: str | None) -> None:
        """Peaks of the runner, plus its Docker sidecar (and the job's containers in it)."""
        try:
            usage = await self._docker.stats(container_id)
            extra = await self._docker.stats(sidecar_id) if sidecar_id else None
        except DockerError:
            return  # gone or Docker away: the event stream tells
        peak, cpu = usage.peak_memory, usage.cpu_seconds
        if extra is not None:  # the sum of peaks bounds the pair's peak from above
            peak, cpu = peak + extra.peak_memory, cpu + extra.cpu_seconds
        runner.peak_memory = max(runner.peak_memory, peak)
        runner.cpu_seconds = max(runner.cpu_seconds, cpu)
