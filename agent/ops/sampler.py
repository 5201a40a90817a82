"""The sampler: copies every *state* (queue depth, runners, container usage, rate limit, Docker
reachability, last reload) from the object that owns it into gauges, every ``SAMPLE_INTERVAL``
seconds, so the services that own that state carry no metrics code."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from agent.ops.metrics import Metrics
from agent.ops.usage import UsageTracker

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 5.0


class _RunnerLike(Protocol):
    @property
    def pool(self) -> str: ...
    @property
    def state(self) -> Any: ...
    @property
    def container_id(self) -> str | None: ...
    @property
    def sidecar_id(self) -> str | None: ...  # its Docker sidecar (docker = "dind")


@dataclass
class Sources:
    """Where the sampler reads state; each is a plain call into the object that owns it."""

    runners: Callable[[], Iterable[_RunnerLike]]
    queue_counts: Callable[[], Awaitable[Any]]  # JobQueue.counts
    pools: Callable[[], Iterable[str]]  # pool names of the live config
    rate_limit_remaining: Callable[[], int | None]
    docker_ping: Callable[[], Awaitable[None]]
    paused: Callable[[], bool]
    reload_state: Callable[[], tuple[bool, float]]  # (last reload ok, last success time)
    outdated_pools: Callable[[], Iterable[str]] = lambda: ()  # pools held for an old image


class Sampler:
    """Copies state into gauges every ``interval`` seconds; ``sample_once`` is one pass."""

    def __init__(
        self, metrics: Metrics, sources: Sources, *, usage: UsageTracker | None = None
    ) -> None:
        self._m = metrics
        self._s = sources
        self.usage = usage or UsageTracker()
        self.last_counts: Any = None

    async def run(
        self,
        *,
        interval: float = SAMPLE_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample until cancelled; a failing source is logged and the rest still sampled."""
        await self.sample_once()
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.sample_once()

    async def sample_once(self) -> None:
        m, s = self._m, self._s
        pools = list(s.pools())
        await self._sample_queue(pools)
        runners = list(s.runners())
        m.runners.clear()
        for pool in pools:
            m.runners.labels(pool, "idle")  # present at 0 so dashboards see every pool
        for runner in runners:
            m.runners.labels(runner.pool, str(runner.state)).inc()
        by_id = {r.container_id: r.pool for r in runners if r.container_id}
        by_id |= {r.sidecar_id: r.pool for r in runners if r.sidecar_id}  # docker = "dind"
        load = await trio.to_thread.run_sync(self.usage.sample_blocking, list(by_id), time.time())
        m.container_memory.clear()
        m.container_cpu.clear()
        for pool in pools:
            m.container_memory.labels(pool).set(0)
            m.container_cpu.labels(pool).set(0)
        for cid, used in load.items():
            m.container_memory.labels(by_id[cid]).inc(used.memory)
            m.container_cpu.labels(by_id[cid]).inc(used.cpu)
        outdated = set(s.outdated_pools())
        m.pool_image_outdated.clear()
        for pool in pools:
            m.pool_image_outdated.labels(pool).set(1 if pool in outdated else 0)
        remaining = s.rate_limit_remaining()
        if remaining is not None:
            m.github_rate_limit.set(remaining)
        m.scheduler_paused.set(1 if s.paused() else 0)
        ok, at = s.reload_state()
        m.reload_ok.set(1 if ok else 0)
        m.reload_at.set(at)
        try:
            with trio.fail_after(SAMPLE_INTERVAL):
                await s.docker_ping()
        except Exception as exc:  # any failure to answer means "down" for this metric
            log.debug("docker ping failed: %s", exc)
            m.docker_up.set(0)
        else:
            m.docker_up.set(1)

    async def _sample_queue(self, pools: list[str]) -> None:
        try:
            counts = await self._s.queue_counts()
        except Exception as exc:  # the queue logs its own failures; keep the old values
            log.warning("metrics: cannot read queue counts: %s", exc)
            return
        self.last_counts = counts
        gauge = self._m.queue_jobs
        gauge.clear()
        for pool in pools:
            gauge.labels(pool, "queued", "")
        for (pool, state), n in counts.by_pool_state.items():
            if str(state) not in ("done", "cancelled"):  # dead stays until pruned: alert on it
                gauge.labels(pool, str(state), "").set(n)
        for (pool, priority), n in counts.ready_by_pool_priority.items():
            gauge.labels(pool, "ready", str(priority)).set(n)
