"""The job queue contract shared by the SQLite and Redis backends.

One entry per GitHub job id that gantryd serves. Everything several hosts must agree on lives
behind this interface: jobs and their states, webhook delivery-id dedupe, and the reporter's
outbox (appended in the same atomic step as the state change that causes it).

Ordering: **higher ``priority`` is served first**; among equal priorities, the entry enqueued
first is served first (FIFO). An entry whose ``not_before`` lies in the future is not claimable.

States (``JobState``) and the transitions each method makes::

    enqueue            -> QUEUED (or HELD when ``held``); HELD -> QUEUED (the approval)
    claim              QUEUED -> CLAIMED (lease: token + expiry)
    heartbeat          CLAIMED (lease extended)
    release            CLAIMED -> QUEUED (no attempt consumed)
    fail               CLAIMED -> QUEUED (not_before = now + backoff) | DEAD (attempts exhausted)
    ack, ack_many      CLAIMED -> DONE
    mark_running       QUEUED | CLAIMED -> RUNNING (lease dropped: GitHub owns the job now)
    finish             any non-final (or unknown key) -> DONE (tombstone for an unknown key)
    cancel             any non-final -> CANCELLED
    (HELD is never claimed: a job waiting for an environment approval, docs/github.md §2.4)
    retry              DEAD | CANCELLED -> QUEUED now (attempts reset; an operator's call)
    expired lease      CLAIMED -> QUEUED (crash recovery, done by ``claim`` itself)

DONE, DEAD and CANCELLED are final: a later ``enqueue`` of the same key is a no-op that
reports ``EnqueueOutcome.FINISHED`` (a late ``queued`` delivery after ``completed``). Only an
operator's ``retry`` brings a DEAD or CANCELLED entry back; DONE completed on GitHub and stays.

Methods that take ``delivery_id`` record it in the same atomic step; when that delivery id was
already recorded they change nothing and report a duplicate (GitHub reuses the id on
redelivery). Methods checked against a lease raise ``StaleLease`` when the token is not the
entry's current one: a stale holder must never overwrite a newer holder's work.

Backends run blocking I/O in worker threads; every method here is safe to call from trio.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.storage.errors import SchemaTooNew as SchemaTooNew
from agent.storage.errors import StorageError, StorageUnavailable


class JobState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a runner (maybe delayed by not_before)
    HELD = "held"  # waiting for an environment's reviewers on GitHub; not provisioned until then
    CLAIMED = "claimed"  # leased by a scheduler that is providing a runner
    RUNNING = "running"  # GitHub assigned it to one of our runners (in_progress seen)
    DONE = "done"  # completed on GitHub (any conclusion) or acked
    DEAD = "dead"  # gantryd gave up after retry_attempts infrastructure failures
    CANCELLED = "cancelled"  # cancelled by an operator or by GitHub before it ran


FINAL_STATES = frozenset({JobState.DONE, JobState.DEAD, JobState.CANCELLED})


class EnqueueOutcome(enum.StrEnum):
    CREATED = "created"
    KNOWN = "known"  # the key is already queued/claimed/running: no-op
    FINISHED = "finished"  # the key is already final: no-op
    DUPLICATE_DELIVERY = "duplicate_delivery"  # delivery id seen before: no-op


# The queue's errors are the storage errors (agent.storage.errors says why): aliases, so
# ``except QueueError`` also catches what agent.db raises under the SQLite backend.
QueueError = StorageError
QueueUnavailable = StorageUnavailable


class StaleLease(QueueError):
    """The lease token is no longer the entry's current one (expired and re-claimed, or acked)."""

    def __init__(self, job_id: int, token: str) -> None:
        super().__init__(f"lease {token[:8]}… on job {job_id} is no longer valid")
        self.job_id = job_id
        self.token = token


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What intake knows about a job when it enqueues it (from the workflow_job payload)."""

    job_id: int  # GitHub workflow job id (int64), the unique key
    run_id: int
    run_attempt: int
    repository: str  # "owner/name"
    installation_id: int | None  # GitHub App installation that delivered it, if any
    labels: tuple[str, ...]  # the job's runs-on labels as GitHub sent them
    pool: str  # the pool its labels matched
    priority: int = 0  # higher is served first
    name: str = ""
    workflow_name: str = ""
    head_sha: str = ""
    head_branch: str = ""
    html_url: str = ""

    @property
    def owner(self) -> str:
        return self.repository.split("/", 1)[0]


@dataclass(frozen=True, kw_only=True)
class QueuedJob:
    """A queue entry as stored: the spec plus its bookkeeping."""

    spec: JobSpec
    state: JobState
    attempts: int  # infrastructure failures so far
    enqueued_at: float  # unix seconds
    not_before: float  # unix seconds; claimable only from then
    updated_at: float
    runner_name: str | None = None  # set by mark_running
    conclusion: str | None = None  # set by finish (GitHub's conclusion) or the final reason
    last_error: str | None = None  # reason of the last fail (dead-letter reason)


@dataclass(frozen=True, kw_only=True)
class Lease:
    """Proof of a claim. Only the holder of the current token may ack, fail or release."""

    job: QueuedJob
    token: str
    expires_at: float  # unix seconds

    @property
    def job_id(self) -> int:
        return self.job.spec.job_id


@dataclass(frozen=True, kw_only=True)
class FailOutcome:
    dead: bool  # True: dead-lettered; False: queued again after retry_at
    retry_at: float | None


@dataclass(frozen=True, kw_only=True)
class OutboxEntry:
    """A pending report for GitHub. Entries per job coalesce: the latest state wins."""

    job_id: int
    seq: int  # increases with every write; ack_outbox only removes the seq it was given
    state: JobState
    spec: JobSpec
    detail: Mapping[str, Any] = field(default_factory=dict)  # e.g. reason, runner name


@dataclass(frozen=True, kw_only=True)
class Counts:
    by_state: Mapping[JobState, int]
    by_pool_state: Mapping[tuple[str, JobState], int]
    ready_by_pool_priority: Mapping[tuple[str, int], int]  # claimable QUEUED entries


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Backoff for infrastructure failures: delay * 2**(attempt-1), ±jitter, capped."""

    attempts: int = 3  # failures allowed before dead-lettering
    delay: float = 30.0  # seconds before the first retry
    max_delay: float = 600.0
    jitter: float = 0.2  # fraction of the delay, uniformly random either way

    def backoff(self, failures: int, rand: float) -> float | None:
        """Seconds before the retry that follows the ``failures``-th failure (1-based).

        None when ``failures`` exceeds ``attempts``: the job is dead-lettered. ``rand`` is a
        uniform draw from [0, 1) that picks the jitter, so callers (and tests) own randomness.
        """
        if failures > self.attempts:
            return None
        base = min(self.delay * 2.0 ** (failures - 1), self.max_delay)
        return min(base * (1 + self.jitter * (2 * rand - 1)), self.max_delay)


class JobQueue(Protocol):
    """The queue contract. See the module docstring for states and transitions."""

    async def enqueue(
        self,
        spec: JobSpec,
        *,
        delivery_id: str | None = None,
        not_before: float | None = None,
        held: bool = False,
    ) -> EnqueueOutcome:
        """Add a job in QUEUED (HELD if ``held``) unless its key is known (then a no-op that
        says why); a HELD job enqueued without ``held`` moves to QUEUED (CREATED): approved."""

    async def claim(
        self, n: int, *, lease_seconds: float, pools: Sequence[str] | None = None
    ) -> list[Lease]:
        """Lease up to n claimable jobs, highest priority then oldest first.

        Expired leases are returned to QUEUED first. Paused pools are skipped. Two claimers
        never receive the same job.
        """

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> Lease:
        """Extend a live lease; raises StaleLease if it is no longer current."""

    async def ack(self, lease: Lease) -> None:
        """CLAIMED -> DONE; raises StaleLease."""

    async def ack_many(self, leases: Sequence[Lease]) -> None:
        """``ack`` of every lease in one atomic step (one commit): all are acked, or none.

        Raises StaleLease for a stale one and then acks none of them; the same lease given
        twice counts once. A batch claim plus ``ack_many`` costs two commits, not n + 1.
        """

    async def fail(self, lease: Lease, reason: str) -> FailOutcome:
        """Count an infrastructure failure: retry later with backoff, or dead-letter."""

    async def release(self, lease: Lease) -> None:
        """CLAIMED -> QUEUED now, without consuming an attempt; raises StaleLease."""

    async def mark_running(
        self, job_id: int, runner_name: str, *, delivery_id: str | None = None
    ) -> bool:
        """QUEUED/CLAIMED -> RUNNING on runner_name. False if unknown, final or duplicate."""

    async def finish(self, job_id: int, conclusion: str, *, delivery_id: str | None = None) -> bool:
        """Mark DONE with GitHub's conclusion; an unknown key gets a DONE tombstone.

        False if it was already final or the delivery is a duplicate.
        """

    async def cancel(self, job_id: int, reason: str) -> bool:
        """Any non-final state -> CANCELLED. False if unknown or already final."""

    async def retry(self, job_id: int) -> bool:
        """DEAD or CANCELLED -> QUEUED now, at the back of its priority, with attempts reset.

        Clears the conclusion and runner (``last_error`` stays as history) and writes a QUEUED
        outbox entry. False if unknown or in any other state: DONE ran on GitHub, so it stays.
        """

    async def record_delivery(self, delivery_id: str) -> bool:
        """Remember a delivery id that changes no job (ping, ignored jobs). False if seen."""

    async def get(self, job_id: int) -> QueuedJob | None: ...

    async def position(self, job_id: int) -> int | None:
        """1-based place among claimable QUEUED jobs of its pool, None if not QUEUED."""

    async def list_jobs(
        self, states: Collection[JobState], *, pool: str | None = None, limit: int = 100
    ) -> list[QueuedJob]:
        """Up to ``limit`` entries in ``states`` (of ``pool`` only, if given), for operators.

        QUEUED and CLAIMED entries come first, in the order claim serves them (priority, then
        FIFO; delayed ones included); the others follow, most recently updated first.
        """

    async def counts(self) -> Counts: ...

    async def pause(self, pool: str) -> None: ...

    async def resume(self, pool: str) -> None: ...

    async def outbox(self, limit: int) -> list[OutboxEntry]:
        """Pending reports, oldest first, at most one per job (the latest)."""

    async def ack_outbox(self, job_id: int, seq: int) -> None:
        """Drop the job's outbox entry if it is still at seq (a newer write stays)."""

    async def prune(self, *, older_than: float, batch: int = 500) -> int:
        """Delete final entries and delivery ids older than the cutoff; return how many."""

    async def aclose(self) -> None: ...
