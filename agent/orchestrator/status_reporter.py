"""The status reporter: drains the queue's outbox of job state changes toward GitHub.

Every state change is appended to the outbox in the same transaction that makes it, so a crash
never loses a report; an entry is removed only after it was handled, and only if no newer state
was written meanwhile (``ack_outbox`` compares ``seq``).

Today it logs each final report line; check runs and commit statuses build on this loop.
"""

from __future__ import annotations

import logging

import trio

from agent.queue.base import JobQueue, OutboxEntry, QueueError

log = logging.getLogger(__name__)

BATCH = 50
IDLE_INTERVAL = 1.0


class StatusReporter:
    def __init__(self, *, queue: JobQueue) -> None:
        self._queue = queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the outbox until cancelled; queue errors are logged and retried."""
        task_status.started()
        while True:
            try:
                handled = await self.drain_once()
            except QueueError as exc:
                log.error("reporter: queue error, retrying: %s", exc)
                handled = 0
            if handled < BATCH:
                await trio.sleep(IDLE_INTERVAL)

    async def drain_once(self) -> int:
        entries = await self._queue.outbox(BATCH)
        for entry in entries:
            self._report(entry)
            await self._queue.ack_outbox(entry.job_id, entry.seq)
        return len(entries)

    def _report(self, entry: OutboxEntry) -> None:
        spec = entry.spec
        detail = " ".join(f"{k}={v}" for k, v in sorted(entry.detail.items()))
        log.info(
            "report job=%s repository=%s pool=%s state=%s %s",
            spec.job_id,
            spec.repository,
            spec.pool,
            entry.state.value,
            detail,
        )
