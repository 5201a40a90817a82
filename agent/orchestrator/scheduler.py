"""The Orchestrator Manager's scheduler: claims queued jobs while capacity allows and hands
each lease to the pool manager, which provisions a runner for it.

It wakes when intake enqueues a job or a runner slot frees up, and at least every
``POLL_INTERVAL`` seconds so delayed retries (``not_before``) and expired leases are picked up.
"""

from __future__ import annotations

import logging

import trio

from agent.container.pool_manager import PoolManager
from agent.queue.base import JobQueue, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


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


class Scheduler:
    def __init__(
        self, *, live: LiveConfig, queue: JobQueue, pools: PoolManager, wakeup: Wakeup
    ) -> None:
        self._live = live
        self._queue = queue
        self._pools = pools
        self._wakeup = wakeup
        self.paused = False  # drain: take no new jobs

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and dispatch until cancelled. Queue errors are logged and retried."""
        task_status.started()
        while True:
            if not self.paused:
                try:
                    await self.dispatch_once()
                except QueueError as exc:
                    log.error("scheduler: queue error, retrying: %s", exc)
            with trio.move_on_after(POLL_INTERVAL):
                await self._wakeup.wait()

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
                self._pools.provision_soon(lease)
                handed += 1
        return handed
