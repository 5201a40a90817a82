"""The Orchestrator Manager's scheduler: which pool claims next, how many jobs, and which
claimed jobs wait for room.

Claim order: each pass serves the pools in the order of the configuration file, each up to
the slots the pool manager reports free (``capacity.free_slots``: its own cap, the host-wide
cap and the memory budget, asked afresh after each pool's jobs are placed, since they share
the host-wide caps) and at most ``scheduler.concurrency`` jobs per pool and pass.

Priority: within a pool the queue hands out the highest priority first, then the oldest
(``agent.queue.base``). Jobs claimed in an earlier pass and still waiting are offered before
anything new is claimed: they came first.

Fairness between repositories: a claimed job whose repository is at its pool's
``max_concurrent`` is *parked* here (its lease kept alive) instead of started, so it never
takes room from other repositories' jobs; at most ``MAX_PARKED`` per pool, beyond that it goes
back to the queue. Parked jobs are offered again at every pass, and let go as soon as GitHub
gives their job to a runner or ends it (``job_taken``).

The scheduler wakes when intake enqueues a job or a runner slot frees up, and at least every
``POLL_INTERVAL`` seconds so delayed retries (``not_before``), expired leases and parked jobs
are seen to.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio

from agent.config import PoolConfig
from agent.container.capacity import Placement
from agent.container.leases import keep_alive, release
from agent.queue.base import JobQueue, Lease, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
MAX_PARKED = 64  # claimed jobs per pool held while their repository is at max_concurrent


class Wakeup:
    """A level-triggered nudge: ``set()`` from anywhere, ``wait()`` returns once per burst."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        try:
            await self._event.wait()
        finally:
            self._event = trio.Event()


class Pools(Protocol):
    """What the scheduler asks of the pool manager (``agent.container.pool_manager``)."""

    def free_slots(self, pool: PoolConfig) -> int:
        """How many jobs of ``pool`` may be claimed now."""

    def place(self, lease: Lease) -> Placement:
        """Give the claimed job a runner, or answer NO_ROOM (the caller keeps the lease)."""


class Scheduler:
    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        pools: Pools,
        wakeup: Wakeup,
        clock: Callable[[], float] = time.time,
        drain_file: Path | None = None,
        drained: bool = False,
    ) -> None:
        self._live = live
        self._drain_file = drain_file
        self._queue = queue
        self._pools = pools
        self._wakeup = wakeup
        self._clock = clock
        self._parked: dict[str, list[Lease]] = {}  # pool -> leases waiting for a repository slot
        # drain (or SIGTERM): take no new jobs (parked ones were taken already)
        self.paused = drained

    async def set_drained(self, drained: bool) -> None:
        """``gantryd drain`` / ``resume``: pause or not, and record it in ``drain_file`` first,
        so a restart (or a crash) of a drained host claims nothing until ``resume``."""
        if self._drain_file is not None:
            await trio.to_thread.run_sync(record_drained, self._drain_file, drained)
        self.paused = drained

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Offer parked jobs, then claim and dispatch, until cancelled. Queue errors are logged
        and retried."""
        task_status.started()
        while True:
            try:
                await self.serve_parked()
                if not self.paused:
                    await self.dispatch_once()
            except QueueError as exc:
                log.error("scheduler: queue error, retrying: %s", exc)
            with trio.move_on_after(POLL_INTERVAL):
                await self._wakeup.wait()

    def job_taken(self, job_id: int) -> None:
        """GitHub gave the job to a runner (maybe another host's) or ended it: a lease parked
        for it is void."""
        for pool_name, parked in self._parked.items():
            self._parked[pool_name] = [lease for lease in parked if lease.job_id != job_id]

    async def dispatch_once(self) -> int:
        """One pass over the pools: claim what fits, hand it over. Returns how many."""
        config = self._live.current
        handed = 0
        for pool in config.pools:
            free = min(self._pools.free_slots(pool), config.scheduler.concurrency)
            if free <= 0:
                continue
            leases = await self._queue.claim(
                free, lease_seconds=config.queue.lease, pools=[pool.name]
            )
            for lease in leases:
                log.info(
                    "scheduler: dispatching job=%s pool=%s priority=%s attempt=%s",
                    lease.job_id,
                    pool.name,
                    lease.job.spec.priority,
                    lease.job.attempts + 1,
                )
                await self._offer(lease)
                handed += 1
        return handed

    async def serve_parked(self) -> None:
        """Keep parked leases alive and offer them again (each may be parked again)."""
        for pool_name, parked in list(self._parked.items()):
            self._parked[pool_name] = []
            for lease in parked:
                kept = await keep_alive(
                    self._queue,
                    lease,
                    lease_seconds=self._live.current.queue.lease,
                    now=self._clock(),
                )
                if kept is not None:
                    await self._offer(kept)

    async def _offer(self, lease: Lease) -> None:
        if self._pools.place(lease) is not Placement.NO_ROOM:
            return
        parked = self._parked.setdefault(lease.job.spec.pool, [])
        if len(parked) < MAX_PARKED:
            parked.append(lease)
        else:
            await release(self._queue, lease)


def record_drained(path: Path, drained: bool) -> None:
    """Create (mode 0600) or remove the drain file, durably: the directory is fsynced too."""
    if drained:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"drained by `gantryd drain`; `gantryd resume` removes this file\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        path.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
