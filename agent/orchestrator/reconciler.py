"""The reconciler: periodic repair of what webhooks alone cannot guarantee.

Today it prunes finished queue entries and delivery ids past ``queue.retention`` (kept at least
as long as GitHub's redelivery window, so a redelivery is still recognised). Recovering missed
``queued`` deliveries through the REST API builds on this loop.
"""

from __future__ import annotations

import logging
import time

import trio

from agent.queue.base import JobQueue, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, *, live: LiveConfig, queue: JobQueue) -> None:
        self._live = live
        self._queue = queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.reconcile_once()
            except QueueError as exc:
                log.error("reconciler: queue error, retrying next interval: %s", exc)
            await trio.sleep(self._live.current.scheduler.reconcile_interval)

    async def reconcile_once(self) -> None:
        cutoff = time.time() - self._live.current.queue.retention
        pruned = await self._queue.prune(older_than=cutoff)
        if pruned:
            log.info("reconciler: pruned %d finished entries", pruned)
