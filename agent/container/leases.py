"""Keeping and giving back the queue's claim on a job, for whoever holds it meanwhile.

A claimed job's lease is held by its waiting runner (the pool manager) or, while no runner may
start for it, by the scheduler; both renew and release it the same way.
"""

from __future__ import annotations

import logging

from agent.queue.base import JobQueue, Lease, QueueError, StaleLease

log = logging.getLogger(__name__)


async def keep_alive(
    queue: JobQueue, lease: Lease, *, lease_seconds: float, now: float
) -> Lease | None:
    """The lease, renewed once half of ``lease_seconds`` is left; None when it is no longer
    ours (expired and re-claimed, or the job started running). A queue error keeps the old
    lease: the next pass tries again."""
    if lease.expires_at - now >= lease_seconds / 2:
        return lease
    try:
        return await queue.heartbeat(lease, lease_seconds=lease_seconds)
    except StaleLease:
        return None
    except QueueError as exc:
        log.warning("heartbeat failed job=%s: %s", lease.job_id, exc)
        return lease


async def release(queue: JobQueue, lease: Lease) -> None:
    """Put a claimed job back in the queue without consuming an attempt."""
    try:
        await queue.release(lease)
    except StaleLease:
        pass  # expired and re-claimed meanwhile: nothing of ours to give back
    except QueueError as exc:
        log.warning("releasing job %s failed (its lease will expire): %s", lease.job_id, exc)
