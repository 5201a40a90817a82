"""The queue contract (agent/queue/base.py), run identically against SQLite and Redis."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agent.queue.base import (
    EnqueueOutcome,
    JobQueue,
    JobState,
    Lease,
    RetryPolicy,
    StaleLease,
)
from tests.queue.queue_support import FakeClock, spec

LEASE = 60.0


async def claim_one(queue: JobQueue, **kw: object) -> Lease:
    [lease] = await queue.claim(1, lease_seconds=LEASE, **kw)  # type: ignore[arg-type]
    return lease


async def test_enqueue_outcomes(queue: JobQueue) -> None:
    assert await queue.enqueue(spec(1), delivery_id="d1") is EnqueueOutcome.CREATED
    assert await queue.enqueue(spec(1), delivery_id="d2") is EnqueueOutcome.KNOWN
    assert await queue.enqueue(spec(2), delivery_id="d1") is EnqueueOutcome.DUPLICATE_DELIVERY
    assert await queue.get(2) is None
    assert await queue.finish(1, "success")
    assert await queue.enqueue(spec(1)) is EnqueueOutcome.FINISHED
    job = await queue.get(1)
    assert job is not None and job.state is JobState.DONE and job.conclusion == "success"


async def test_held_job_is_never_claimed_until_approved_then_once(queue: JobQueue) -> None:
    """A job waiting for an environment approval is kept (HELD), not provisioned; the queued
    delivery after approval makes it claimable once, and a repeat changes nothing."""
    assert await queue.enqueue(spec(1), delivery_id="q1", held=True) is EnqueueOutcome.CREATED
    assert await queue.enqueue(spec(1), held=True) is EnqueueOutcome.KNOWN
    assert await queue.claim(5, lease_seconds=LEASE) == []
    job = await queue.get(1)
    assert job is not None and job.state is JobState.HELD
    assert (await queue.counts()).by_state.get(JobState.HELD) == 1
    assert [j.spec.job_id for j in await queue.list_jobs([JobState.HELD])] == [1]
    assert await queue.enqueue(spec(1), delivery_id="q2") is EnqueueOutcome.CREATED
    assert await queue.list_jobs([JobState.HELD]) == []
    assert await queue.enqueue(spec(1), delivery_id="q3") is EnqueueOutcome.KNOWN
    lease = await claim_one(queue)
    assert lease.job_id == 1 and await queue.claim(5, lease_seconds=LEASE) == []
    states = [entry.state for entry in await queue.outbox(10) if entry.job_id == 1]
    assert states and states[-1] is not JobState.HELD  # its report moves on past "waiting"


async def test_rejected_held_job_is_dropped(queue: JobQueue) -> None:
    await queue.enqueue(spec(1), held=True)
    assert await queue.finish(1, "failure")
    assert await queue.enqueue(spec(1)) is EnqueueOutcome.FINISHED
    assert await queue.claim(5, lease_seconds=LEASE) == []
    assert (await queue.counts()).by_state.get(JobState.HELD, 0) == 0
    assert await queue.list_jobs([JobState.HELD]) == []


async def test_get_round_trips_the_spec(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(2**62, priority=-3))
    job = await queue.get(2**62)
    assert job is not None
    assert job.spec == spec(2**62, priority=-3)
    assert (job.state, job.attempts, job.enqueued_at, job.not_before) == (
        JobState.QUEUED, 0, clock.now, clock.now,
    )  # fmt: skip


async def test_higher_priority_first_then_fifo(queue: JobQueue, clock: FakeClock) -> None:
    for job_id, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)]:
        await queue.enqueue(spec(job_id, priority=priority))
        clock.advance(1)
    leases = await queue.claim(10, lease_seconds=LEASE)
    assert [lease.job_id for lease in leases] == [2, 4, 1, 3, 5]
    assert len({lease.token for lease in leases}) == 5
    assert all(lease.job.state is JobState.CLAIMED for lease in leases)
    assert all(lease.expires_at == clock.now + LEASE for lease in leases)


async def test_claim_respects_n_and_pools(queue: JobQueue) -> None:
    await queue.enqueue(spec(1, pool="a"))
    await queue.enqueue(spec(2, pool="b"))
    await queue.enqueue(spec(3, pool="a"))
    assert await queue.claim(0, lease_seconds=LEASE) == []
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE, pools=["b"])] == [2]
    assert [x.job_id for x in await queue.claim(1, lease_seconds=LEASE)] == [1]


async def test_delayed_entries_wait(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(1, priority=9), not_before=clock.now + 30)
    await queue.enqueue(spec(2))
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE)] == [2]
    clock.advance(30)
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE)] == [1]


async def test_heartbeat_extends_and_expiry_requeues(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(1))
    lease = await claim_one(queue)
    clock.advance(LEASE - 1)
    renewed = await queue.heartbeat(lease, lease_seconds=LEASE)
    assert renewed.expires_at == clock.now + LEASE and renewed.token == lease.token
    clock.advance(LEASE - 1)
    assert await queue.claim(1, lease_seconds=LEASE) == []  # still leased
    clock.advance(1)
    again = await claim_one(queue)  # expired: back in the queue, claimed anew
    assert again.job_id == 1 and again.token != lease.token
    for stale in (queue.ack(lease), queue.release(lease), queue.fail(lease, "x")):
        with pytest.raises(StaleLease):
            await stale
    with pytest.raises(StaleLease):
        await queue.heartbeat(lease, lease_seconds=LEASE)
    await queue.ack(again)
    with pytest.raises(StaleLease):
        await queue.ack(again)
    job = await queue.get(1)
    assert job is not None and job.state is JobState.DONE and job.attempts == 0


async def test_ack_many_is_all_or_nothing(queue: JobQueue) -> None:
    for job_id in range(1, 5):
        await queue.enqueue(spec(job_id))
    first, second, third, fourth = await queue.claim(4, lease_seconds=LEASE)
    await queue.ack(second)
    with pytest.raises(StaleLease) as stale:
        await queue.ack_many([first, second, third])
    assert stale.value.job_id == 2
    states = [job.state for job in [await queue.get(i) for i in range(1, 5)] if job]
    assert states == [JobState.CLAIMED, JobState.DONE, JobState.CLAIMED, JobState.CLAIMED]
    await queue.ack_many([])
    await queue.ack_many([first, third, first])  # the same lease twice counts once
    states = [job.state for job in [await queue.get(i) for i in range(1, 5)] if job]
    assert states == [JobState.DONE, JobState.DONE, JobState.DONE, JobState.CLAIMED]
    counts = await queue.counts()
    assert counts.by_state == {JobState.DONE: 3, JobState.CLAIMED: 1}
    with pytest.raises(StaleLease):
        await queue.ack_many([fourth, first])
    await queue.ack_many([fourth])


async def test_fail_backs_off_then_dead_letters(open_backend, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    retry = RetryPolicy(attempts=2, delay=10.0, max_delay=15.0, jitter=0.5)
    async with open_backend(retry=retry, clock=clock) as queue:
        await queue.enqueue(spec(1))
        outcome = await queue.fail(await claim_one(queue), "image pull failed")
        assert not outcome.dead and clock.now + 5 <= outcome.retry_at <= clock.now + 15
        job = await queue.get(1)
        assert (job.state, job.attempts, job.last_error) == (
            JobState.QUEUED, 1, "image pull failed",
        )  # fmt: skip
        assert job.not_before == pytest.approx(outcome.retry_at)
        assert await queue.claim(1, lease_seconds=LEASE) == []
        clock.now = outcome.retry_at
        outcome = await queue.fail(await claim_one(queue), "again")
        assert not outcome.dead and outcome.retry_at <= clock.now + 15  # capped
        clock.now = outcome.retry_at
        outcome = await queue.fail(await claim_one(queue), "container exited")
        assert outcome.dead and outcome.retry_at is None
        job = await queue.get(1)
        assert (job.state, job.attempts, job.last_error) == (JobState.DEAD, 3, "container exited")
        assert await queue.enqueue(spec(1)) is EnqueueOutcome.FINISHED


async def test_release_keeps_attempts_and_place(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(1))
    await queue.enqueue(spec(2))
    lease = await claim_one(queue)
    await queue.release(lease)
    job = await queue.get(1)
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0
    assert (await claim_one(queue)).job_id == 1  # FIFO place kept
    with pytest.raises(StaleLease):
        await queue.release(lease)


async def test_mark_running_finish_cancel(queue: JobQueue) -> None:
    await queue.enqueue(spec(1))
    await queue.enqueue(spec(2))
    await queue.enqueue(spec(3))
    lease = await claim_one(queue)
    assert await queue.mark_running(1, "runner-a", delivery_id="r1")
    assert not await queue.mark_running(2, "runner-b", delivery_id="r1")  # duplicate delivery
    with pytest.raises(StaleLease):  # GitHub owns it now: the lease is gone
        await queue.ack(lease)
    job = await queue.get(1)
    assert job is not None and job.state is JobState.RUNNING and job.runner_name == "runner-a"
    assert await queue.mark_running(2, "runner-b")  # straight from QUEUED
    assert not await queue.mark_running(99, "runner-c")
    assert await queue.finish(1, "success", delivery_id="f1")
    assert not await queue.finish(1, "failure")
    assert not await queue.finish(2, "success", delivery_id="f1")
    assert await queue.cancel(3, "cancelled by operator")
    assert not await queue.cancel(3, "again")
    assert not await queue.cancel(99, "unknown")
    assert not await queue.mark_running(3, "late")
    job = await queue.get(3)
    assert job is not None and job.state is JobState.CANCELLED
    assert job.conclusion == "cancelled by operator"
    assert await queue.claim(5, lease_seconds=LEASE) == []


async def test_finish_of_unknown_job_leaves_a_tombstone(queue: JobQueue) -> None:
    assert await queue.finish(5, "success")
    job = await queue.get(5)
    assert job is not None and job.state is JobState.DONE
    assert await queue.enqueue(spec(5)) is EnqueueOutcome.FINISHED
    assert await queue.outbox(10) == []  # never served: nothing to report


async def test_pause_resume(queue: JobQueue) -> None:
    await queue.enqueue(spec(1, pool="a", priority=5))
    await queue.enqueue(spec(2, pool="b"))
    await queue.pause("a")
    await queue.pause("a")
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE)] == [2]
    await queue.resume("a")
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE)] == [1]


async def test_counts_and_position(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(1, pool="a", priority=1))
    await queue.enqueue(spec(2, pool="a", priority=2))
    await queue.enqueue(spec(3, pool="a", priority=1))
    await queue.enqueue(spec(4, pool="b"))
    await queue.enqueue(spec(5, pool="a", priority=9), not_before=clock.now + 100)
    assert [await queue.position(i) for i in (2, 1, 3, 4)] == [1, 2, 3, 1]
    await queue.claim(1, lease_seconds=LEASE, pools=["b"])
    await queue.mark_running(2, "r")
    assert await queue.position(2) is None and await queue.position(4) is None
    assert await queue.position(1) == 1 and await queue.position(99) is None
    counts = await queue.counts()
    assert counts.by_state == {JobState.QUEUED: 3, JobState.CLAIMED: 1, JobState.RUNNING: 1}
    assert counts.by_pool_state == {
        ("a", JobState.QUEUED): 3, ("a", JobState.RUNNING): 1, ("b", JobState.CLAIMED): 1,
    }  # fmt: skip
    assert counts.ready_by_pool_priority == {("a", 1): 2}
    clock.advance(100)
    assert (await queue.counts()).ready_by_pool_priority == {("a", 1): 2, ("a", 9): 1}
    assert await queue.position(1) == 2


async def test_outbox_coalesces_latest_state(queue: JobQueue) -> None:
    await queue.enqueue(spec(1))
    await queue.enqueue(spec(2))
    lease = await claim_one(queue)
    await queue.heartbeat(lease, lease_seconds=LEASE)  # no report for claims or heartbeats
    [first, second] = await queue.outbox(10)
    assert (first.job_id, first.state, second.job_id) == (1, JobState.QUEUED, 2)
    assert first.spec == spec(1)
    await queue.mark_running(1, "runner-a")
    await queue.ack_outbox(1, first.seq)  # stale seq: the newer entry stays
    entries = await queue.outbox(10)
    assert [(e.job_id, e.state) for e in entries] == [(2, JobState.QUEUED), (1, JobState.RUNNING)]
    assert entries[1].detail == {"runner_name": "runner-a"} and entries[1].seq > first.seq
    await queue.ack_outbox(1, entries[1].seq)
    await queue.cancel(2, "operator")
    [entry] = await queue.outbox(10)
    assert (entry.job_id, entry.state, entry.detail) == (
        2,
        JobState.CANCELLED,
        {"reason": "operator"},
    )
    assert await queue.outbox(0) == []


async def test_prune_only_old_final_entries(queue: JobQueue, clock: FakeClock) -> None:
    for job_id in range(1, 8):
        await queue.enqueue(spec(job_id), delivery_id=f"d{job_id}")
    for job_id in range(1, 6):
        await queue.finish(job_id, "success")
    await queue.record_delivery("ping")
    clock.advance(100)
    await queue.finish(6, "success")
    assert await queue.prune(older_than=clock.now - 50, batch=2) == 5 + 8
    assert [await queue.get(i) is None for i in range(1, 8)] == [True] * 5 + [False] * 2
    assert [e.job_id for e in await queue.outbox(10)] == [7, 6]
    assert await queue.record_delivery("ping")  # forgotten
    assert not await queue.record_delivery("ping")


async def test_concurrent_claimers_never_share_a_job(queue: JobQueue) -> None:
    for job_id in range(200):
        await queue.enqueue(spec(job_id))
    got: list[int] = []

    async def claimer() -> None:
        while leases := await queue.claim(7, lease_seconds=LEASE):
            got.extend(lease.job_id for lease in leases)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(claimer)
    assert sorted(got) == list(range(200))


async def test_concurrent_calls_get_their_own_outcomes(queue: JobQueue) -> None:
    """Calls that arrive together share a commit (SQLite) or a round trip (Redis)."""
    await queue.enqueue(spec(100))
    [stale] = await queue.claim(1, lease_seconds=LEASE)
    await queue.release(stale)
    outcomes: dict[int, object] = {}

    async def enqueue(job_id: int) -> None:
        outcomes[job_id] = await queue.enqueue(spec(job_id % 10), delivery_id=f"d{job_id}")

    async def ack_stale() -> None:
        with pytest.raises(StaleLease):
            await queue.ack(stale)
        outcomes[-1] = StaleLease

    async with trio.open_nursery() as nursery:
        for job_id in range(20):
            nursery.start_soon(enqueue, job_id)
        nursery.start_soon(ack_stale)
    created = [i for i in range(20) if outcomes[i] is EnqueueOutcome.CREATED]
    assert sorted(i % 10 for i in created) == list(range(10))  # each key created once
    assert all(outcomes[i] is EnqueueOutcome.KNOWN for i in range(20) if i not in created)
    assert outcomes[-1] is StaleLease
    counts = await queue.counts()
    assert counts.by_state == {JobState.QUEUED: 11}


async def test_wait_ready_wakes_on_enqueue(queue: JobQueue) -> None:
    wait_ready = queue.wait_ready  # type: ignore[attr-defined]
    await queue.enqueue(spec(1))
    with trio.fail_after(5):
        assert await wait_ready(5)  # work made ready before the wait is not missed
    assert not await wait_ready(0.05)
    async with trio.open_nursery() as nursery:
        woke = trio.Event()

        async def waiter() -> None:
            assert await wait_ready(10)
            woke.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()  # the waiter is parked
        await queue.enqueue(spec(2))
        with trio.fail_after(5):
            await woke.wait()


async def test_enqueue_many(queue: JobQueue) -> None:
    await queue.enqueue(spec(1))
    outcomes = await queue.enqueue_many([spec(2, priority=1), spec(1), spec(3)])  # type: ignore[attr-defined]
    assert outcomes == [EnqueueOutcome.CREATED, EnqueueOutcome.KNOWN, EnqueueOutcome.CREATED]
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE)] == [2, 1, 3]


async def test_wait_ready_can_be_cancelled(queue: JobQueue) -> None:
    with trio.move_on_after(0.1) as scope:
        await queue.wait_ready(60)  # type: ignore[attr-defined]
    assert scope.cancelled_caught


async def dead_letter(queue: JobQueue, clock: FakeClock, job_id: int) -> None:
    """Fail the only claimable job until NO_JITTER's attempts are used up."""
    while True:
        outcome = await queue.fail(await claim_one(queue), f"boom {job_id}")
        if outcome.dead:
            return
        assert outcome.retry_at is not None
        clock.now = outcome.retry_at


async def test_list_jobs_orders_like_claim_then_newest(queue: JobQueue, clock: FakeClock) -> None:
    for job_id, priority, pool in [(1, 0, "a"), (2, 5, "b"), (3, 0, "a"), (4, 5, "a")]:
        await queue.enqueue(spec(job_id, priority=priority, pool=pool))
        clock.advance(1)
    await queue.enqueue(spec(5, priority=9), not_before=clock.now + 100)  # delayed, still listed
    await queue.claim(1, lease_seconds=LEASE, pools=["a"])  # 4: CLAIMED keeps its place
    for job_id in (6, 7, 8):
        await queue.enqueue(spec(job_id))
    clock.advance(1)
    await queue.mark_running(6, "r6")
    clock.advance(1)
    await queue.finish(7, "success")
    clock.advance(1)
    await queue.cancel(8, "no longer wanted")
    clock.advance(1)
    await queue.finish(9, "success")  # a tombstone is DONE too

    waiting = [JobState.QUEUED, JobState.CLAIMED]
    listed = await queue.list_jobs(waiting)
    assert [j.spec.job_id for j in listed] == [5, 2, 4, 1, 3]
    assert [j.state for j in listed][:3] == [JobState.QUEUED, JobState.QUEUED, JobState.CLAIMED]
    assert [j.spec.job_id for j in await queue.list_jobs(waiting, pool="a")] == [4, 1, 3]
    assert [j.spec.job_id for j in await queue.list_jobs(waiting, limit=2)] == [5, 2]
    assert [j.spec.job_id for j in await queue.list_jobs([JobState.QUEUED])] == [5, 2, 1, 3]
    assert [j.spec.job_id for j in await queue.list_jobs(list(JobState))] == [
        5, 2, 4, 1, 3, 9, 8, 7, 6,
    ]  # fmt: skip
    final = [JobState.DONE, JobState.RUNNING, JobState.CANCELLED]
    assert [j.spec.job_id for j in await queue.list_jobs(final)] == [9, 8, 7, 6]
    assert [j.spec.job_id for j in await queue.list_jobs(final, limit=3)] == [9, 8, 7]
    assert [j.spec.job_id for j in await queue.list_jobs([JobState.DEAD])] == []
    assert await queue.list_jobs(list(JobState), limit=0) == []
    assert await queue.list_jobs([]) == []
    await queue.finish(6, "success")
    assert await queue.list_jobs([JobState.RUNNING]) == []  # left the running index


async def test_retry_requeues_dead_and_cancelled(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(1))
    await dead_letter(queue, clock, 1)
    for job_id in (2, 3, 4):
        await queue.enqueue(spec(job_id))
    await queue.mark_running(2, "r2")
    await queue.cancel(2, "operator")
    await queue.finish(3, "success")
    while await queue.outbox(10):
        for entry in await queue.outbox(10):
            await queue.ack_outbox(entry.job_id, entry.seq)

    clock.advance(5)
    assert await queue.retry(1)
    assert not await queue.retry(1)  # QUEUED now
    assert await queue.retry(2)
    assert not await queue.retry(3)  # DONE completed on GitHub: it stays
    assert not await queue.retry(4)  # QUEUED
    assert not await queue.retry(99)
    dead_one = await queue.get(1)
    assert dead_one is not None
    assert (dead_one.state, dead_one.attempts, dead_one.not_before, dead_one.updated_at) == (
        JobState.QUEUED, 0, clock.now, clock.now,
    )  # fmt: skip
    assert (dead_one.conclusion, dead_one.last_error) == (None, "boom 1")
    cancelled = await queue.get(2)
    assert cancelled is not None
    assert (cancelled.state, cancelled.conclusion, cancelled.runner_name) == (
        JobState.QUEUED, None, None,
    )  # fmt: skip
    done = await queue.get(3)
    assert done is not None and done.state is JobState.DONE
    assert [(e.job_id, e.state) for e in await queue.outbox(10)] == [
        (1, JobState.QUEUED), (2, JobState.QUEUED),
    ]  # fmt: skip
    # Back of its priority (after 4), then served and counted like any queued job.
    assert await queue.position(1) == 2 and await queue.position(2) == 3
    counts = await queue.counts()
    assert counts.by_state == {JobState.QUEUED: 3, JobState.DONE: 1}
    assert [x.job_id for x in await queue.claim(5, lease_seconds=LEASE)] == [4, 1, 2]
    assert (await queue.get(1)).attempts == 0  # type: ignore[union-attr]
    await queue.cancel(1, "again")
    assert await queue.retry(1)  # CLAIMED -> CANCELLED -> QUEUED again


async def test_retried_job_survives_prune(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue(spec(1))
    await queue.cancel(1, "operator")
    clock.advance(100)
    assert await queue.retry(1)
    assert await queue.prune(older_than=clock.now + 1) == 0  # no longer final
    assert (await queue.get(1)).state is JobState.QUEUED  # type: ignore[union-attr]
