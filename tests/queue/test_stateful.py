"""Hypothesis drives each backend and a plain in-memory model of the contract side by side."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agent.queue.base import (
    FINAL_STATES,
    EnqueueOutcome,
    JobQueue,
    JobState,
    Lease,
    StaleLease,
)
from agent.queue.redis import open_redis_queue
from agent.queue.sqlite import open_sqlite_queue
from tests.queue.queue_support import NO_JITTER, FakeClock, RedisServer, spec

LEASE = 60.0
JOB_IDS = st.integers(1, 6)
POOLS = ("a", "b")
DELIVERIES = st.none() | st.sampled_from(["d1", "d2", "d3"])


class Portal:
    """Runs a queue in a trio loop on its own thread so the (sync) state machine can call it."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[JobQueue]]) -> None:
        self._opener = opener
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,))
        self._thread.start()
        self._opened.wait(30)
        if self._error is not None:
            raise self._error

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with self._opener() as queue:
                self.queue = queue
                self._opened.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._opened.set()

    def __call__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        async def call() -> Any:
            return await fn(*args, **kw)

        return trio.from_thread.run(call, trio_token=self._token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)


@dataclass
class MJob:
    pool: str
    priority: int
    seq: int
    state: JobState
    not_before: float
    updated_at: float
    attempts: int = 0
    token: str | None = None
    expires: float = 0.0
    runner_name: str | None = None
    conclusion: str | None = None
    last_error: str | None = None


class QueueMachine(RuleBasedStateMachine):
    make_queue: Callable[[FakeClock], AbstractAsyncContextManager[JobQueue]]

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.call = Portal(lambda: self.make_queue(self.clock))
        self.q = self.call.queue
        self.jobs: dict[int, MJob] = {}
        self.deliveries: dict[str, float] = {}
        self.paused: set[str] = set()
        self.outbox: dict[int, tuple[int, JobState, dict[str, Any]]] = {}
        self.counter = 0
        self.leases: list[Lease] = []

    def teardown(self) -> None:
        self.call.close()

    # -- model helpers --------------------------------------------------------------------
    def _seq(self) -> int:
        self.counter += 1
        return self.counter

    def _report(self, job_id: int, state: JobState, detail: dict[str, Any]) -> None:
        self.outbox[job_id] = (self._seq(), state, detail)

    def _new_delivery(self, delivery: str | None) -> bool:
        if delivery is None:
            return True
        if delivery in self.deliveries:
            return False
        self.deliveries[delivery] = self.clock.now
        return True

    def _set(self, job: MJob, state: JobState) -> None:
        job.state, job.updated_at, job.token = state, self.clock.now, None

    # -- rules ----------------------------------------------------------------------------
    @rule(job_id=JOB_IDS, priority=st.integers(0, 2), pool=st.sampled_from(POOLS),
          delivery=DELIVERIES, delay=st.sampled_from([0.0, 5.0]))  # fmt: skip
    def enqueue(
        self, job_id: int, priority: int, pool: str, delivery: str | None, delay: float
    ) -> None:
        now = self.clock.now
        job = spec(job_id, priority=priority, pool=pool)
        got = self.call(
            self.q.enqueue, job, delivery_id=delivery, not_before=now + delay if delay else None
        )
        if not self._new_delivery(delivery):
            want = EnqueueOutcome.DUPLICATE_DELIVERY
        elif job_id in self.jobs:
            final = self.jobs[job_id].state in FINAL_STATES
            want = EnqueueOutcome.FINISHED if final else EnqueueOutcome.KNOWN
        else:
            want = EnqueueOutcome.CREATED
            self.jobs[job_id] = MJob(pool, priority, self._seq(), JobState.QUEUED, now + delay, now)
            self._report(job_id, JobState.QUEUED, {})
        assert got is want

    @rule(n=st.integers(0, 3), pools=st.none() | st.sampled_from([["a"], ["b"], ["a", "b"]]))
    def claim(self, n: int, pools: list[str] | None) -> None:
        now = self.clock.now
        for job in self.jobs.values():
            if job.state is JobState.CLAIMED and job.expires <= now:
                self._set(job, JobState.QUEUED)
        ready = sorted(
            (j.priority * -1, j.seq, job_id)
            for job_id, j in self.jobs.items()
            if j.state is JobState.QUEUED and j.not_before <= now and j.pool not in self.paused
            and (pools is None or j.pool in pools)
        )  # fmt: skip
        leases = self.call(self.q.claim, n, lease_seconds=LEASE, pools=pools)
        assert [lease.job_id for lease in leases] == [job_id for _, _, job_id in ready[:n]]
        for lease in leases:
            job = self.jobs[lease.job_id]
            self._set(job, JobState.CLAIMED)
            job.token, job.expires = lease.token, now + LEASE
            assert lease.expires_at == job.expires
        self.leases.extend(leases)

    def _live(self, lease: Lease) -> bool:
        job = self.jobs[lease.job_id]
        return job.state is JobState.CLAIMED and job.token == lease.token

    def _leased_call(self, lease: Lease, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        live = self._live(lease)
        try:
            result = self.call(fn, lease, *args, **kw)
        except StaleLease:
            assert not live
            return StaleLease
        assert live
        return result

    @rule(data=st.data(), action=st.sampled_from(["heartbeat", "ack", "release", "fail"]))
    def use_lease(self, data: st.DataObject, action: str) -> None:
        if not self.leases:
            return
        lease = data.draw(st.sampled_from(self.leases))
        job, now = self.jobs[lease.job_id], self.clock.now
        if action == "heartbeat":
            if self._leased_call(lease, self.q.heartbeat, lease_seconds=LEASE) is not StaleLease:
                job.expires, job.updated_at = now + LEASE, now
        elif action == "ack":
            if self._leased_call(lease, self.q.ack) is not StaleLease:
                self._set(job, JobState.DONE)
        elif action == "release":
            if self._leased_call(lease, self.q.release) is not StaleLease:
                self._set(job, JobState.QUEUED)
        else:
            outcome = self._leased_call(lease, self.q.fail, "boom")
            if outcome is StaleLease:
                return
            job.attempts += 1
            job.last_error = "boom"
            delay = NO_JITTER.backoff(job.attempts, 0.5)
            if delay is None:
                self._set(job, JobState.DEAD)
                job.conclusion = "boom"
                self._report(lease.job_id, JobState.DEAD, {"reason": "boom"})
                assert outcome.dead
            else:
                self._set(job, JobState.QUEUED)
                job.not_before = now + delay
                detail = {"reason": "boom", "attempts": job.attempts, "retry_at": now + delay}
                self._report(lease.job_id, JobState.QUEUED, detail)
                assert outcome.retry_at == now + delay

    @rule(data=st.data())
    def ack_many(self, data: st.DataObject) -> None:
        if not self.leases:
            return
        batch = data.draw(st.lists(st.sampled_from(self.leases), max_size=4))
        live = all(self._live(lease) for lease in batch)
        try:
            self.call(self.q.ack_many, batch)
        except StaleLease:
            assert not live  # and nothing was acked: the model is left as it is
            return
        assert live
        for lease in batch:
            self._set(self.jobs[lease.job_id], JobState.DONE)

    @rule(job_id=JOB_IDS, delivery=DELIVERIES)
    def mark_running(self, job_id: int, delivery: str | None) -> None:
        got = self.call(self.q.mark_running, job_id, "runner", delivery_id=delivery)
        job = self.jobs.get(job_id)
        want = self._new_delivery(delivery) and job is not None and job.state not in FINAL_STATES
        if want:
            assert job is not None
            self._set(job, JobState.RUNNING)
            job.runner_name = "runner"
            self._report(job_id, JobState.RUNNING, {"runner_name": "runner"})
        assert got is want

    @rule(job_id=JOB_IDS, delivery=DELIVERIES)
    def finish(self, job_id: int, delivery: str | None) -> None:
        got = self.call(self.q.finish, job_id, "success", delivery_id=delivery)
        job = self.jobs.get(job_id)
        want = self._new_delivery(delivery) and (job is None or job.state not in FINAL_STATES)
        if want and job is None:
            now = self.clock.now
            job = self.jobs[job_id] = MJob("", 0, self._seq(), JobState.DONE, now, now)
        elif want:
            assert job is not None
            self._set(job, JobState.DONE)
            self._report(job_id, JobState.DONE, {"conclusion": "success"})
        if want:
            assert job is not None
            job.conclusion = "success"
        assert got is want

    @rule(job_id=JOB_IDS)
    def cancel(self, job_id: int) -> None:
        got = self.call(self.q.cancel, job_id, "operator")
        job = self.jobs.get(job_id)
        want = job is not None and job.state not in FINAL_STATES
        if want:
            assert job is not None
            self._set(job, JobState.CANCELLED)
            job.conclusion = "operator"
            self._report(job_id, JobState.CANCELLED, {"reason": "operator"})
        assert got is want

    @rule(job_id=JOB_IDS)
    def retry(self, job_id: int) -> None:
        got = self.call(self.q.retry, job_id)
        job = self.jobs.get(job_id)
        want = job is not None and job.state in (JobState.DEAD, JobState.CANCELLED)
        if want:
            assert job is not None
            self._set(job, JobState.QUEUED)
            job.seq, job.attempts, job.not_before = self._seq(), 0, self.clock.now
            job.conclusion = job.runner_name = None
            self._report(job_id, JobState.QUEUED, {})
        assert got is want

    @rule(pool=st.sampled_from(POOLS), paused=st.booleans())
    def pause(self, pool: str, paused: bool) -> None:
        self.call(self.q.pause if paused else self.q.resume, pool)
        (self.paused.add if paused else self.paused.discard)(pool)

    @rule(delivery=st.sampled_from(["d1", "d4"]))
    def record_delivery(self, delivery: str) -> None:
        assert self.call(self.q.record_delivery, delivery) is self._new_delivery(delivery)

    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(stale=st.booleans())
    def ack_outbox(self, stale: bool) -> None:
        entries = self.call(self.q.outbox, 1)
        if entries:  # the invariant checked it is the model's oldest entry
            self.call(self.q.ack_outbox, entries[0].job_id, entries[0].seq - stale)
            if not stale:
                del self.outbox[entries[0].job_id]

    @rule()
    def prune(self) -> None:
        cutoff = self.clock.now - 20
        old = [i for i, j in self.jobs.items() if j.state in FINAL_STATES and j.updated_at < cutoff]
        gone = [d for d, seen in self.deliveries.items() if seen < cutoff]
        for job_id in old:
            del self.jobs[job_id]
            self.outbox.pop(job_id, None)
        for d in gone:
            del self.deliveries[d]
        self.leases = [lease for lease in self.leases if lease.job_id in self.jobs]
        assert self.call(self.q.prune, older_than=cutoff, batch=2) == len(old) + len(gone)

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def agrees_with_model(self) -> None:
        for job_id in range(1, 7):
            got, want = self.call(self.q.get, job_id), self.jobs.get(job_id)
            if want is None:
                assert got is None
                continue
            assert got is not None
            assert (got.state, got.attempts, got.not_before, got.updated_at) == (
                want.state, want.attempts, want.not_before, want.updated_at,
            )  # fmt: skip
            assert (got.runner_name, got.conclusion, got.last_error) == (
                want.runner_name, want.conclusion, want.last_error,
            )  # fmt: skip
        counts = self.call(self.q.counts)
        by_state: dict[JobState, int] = {}
        for j in self.jobs.values():
            by_state[j.state] = by_state.get(j.state, 0) + 1
        assert counts.by_state == by_state
        listed = self.call(self.q.list_jobs, list(JobState))
        waiting = sorted(
            (i for i, j in self.jobs.items() if j.state in (JobState.QUEUED, JobState.CLAIMED)),
            key=lambda i: (-self.jobs[i].priority, self.jobs[i].seq),
        )
        assert [j.spec.job_id for j in listed[: len(waiting)]] == waiting
        rest = listed[len(waiting) :]
        assert sorted(j.spec.job_id for j in rest) == sorted(set(self.jobs) - set(waiting))
        assert [j.updated_at for j in rest] == sorted((j.updated_at for j in rest), reverse=True)
        entries = self.call(self.q.outbox, 100)
        want_outbox = sorted((seq, job_id, state, detail)
                             for job_id, (seq, state, detail) in self.outbox.items())  # fmt: skip
        assert [(e.job_id, e.state, e.detail) for e in entries] == [
            (job_id, state, detail) for _, job_id, state, detail in want_outbox
        ]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_backend_matches_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":

        def make(clock: FakeClock) -> AbstractAsyncContextManager[JobQueue]:
            path = tmp_path / f"{uuid.uuid4().hex}.db"
            return open_sqlite_queue(path, synchronous="normal", retry=NO_JITTER, clock=clock)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")

        def make(clock: FakeClock) -> AbstractAsyncContextManager[JobQueue]:
            prefix = uuid.uuid4().hex
            return open_redis_queue(server.url, prefix=prefix, retry=NO_JITTER, clock=clock)

    machine = type("Machine", (QueueMachine,), {"make_queue": staticmethod(make)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
