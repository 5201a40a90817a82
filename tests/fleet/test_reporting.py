"""Two hosts' reporters draining one Redis outbox into the emulator: one check run per job and
attempt, and never an older state sent after a newer one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, serve_emulator
from agent.fleet.reporting import FleetReports, Verdict
from agent.fleet.stream_redis import StreamRedis
from agent.github.auth import AppAuth
from agent.github.client import GitHubClient
from agent.github.ratelimit import ContentPacer
from agent.orchestrator.status_reporter import StatusReporter
from agent.queue.base import JobQueue, JobState, QueueUnavailable, RetryPolicy
from agent.queue.redis import open_redis_queue
from tests.orchestrator.test_status_reporter import (
    APP_ID,
    INSTALLATION,
    make_live,
    new_job,
    runs_for,
    spec_of,
)
from tests.queue.queue_support import RedisServer


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def emulator(app_key: rsa.RSAPrivateKey) -> Emulator:
    return Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations={INSTALLATION: ["acme/app", "acme/lib"]},
        seed=5,
    )


@pytest.fixture
async def api_url(emulator: Emulator, nursery: trio.Nursery) -> str:
    url: str = await nursery.start(serve_emulator, emulator)
    return url


@pytest.fixture
async def queue(redis_server: RedisServer, prefix: str) -> AsyncIterator[JobQueue]:
    async with open_redis_queue(
        redis_server.url, prefix=prefix, retry=RetryPolicy(attempts=0)
    ) as q:
        yield q


@asynccontextmanager
async def host(
    name: str, tmp_path: Path, queue: JobQueue, api_url: str, key: rsa.RSAPrivateKey, url: str,
    prefix: str,
) -> AsyncIterator[tuple[StatusReporter, FleetReports]]:  # fmt: skip
    """One host's reporter, with its own Redis connection for the shared check-run records."""
    r = StreamRedis(url, prefix=prefix)
    shared = FleetReports(r)
    try:
        async with GitHubClient(api_url, AppAuth(app_id=str(APP_ID), key=key)) as client:
            yield (
                StatusReporter(
                    queue=queue,
                    github=client,
                    live=make_live(tmp_path / name, api_url),
                    instance=name,
                    pacer=ContentPacer(per_minute=10_000, per_hour=10_000),
                    shared=shared,
                ),
                shared,
            )
    finally:
        await r.aclose()


async def drain_together(queue: JobQueue, *hosts: tuple[StatusReporter, FleetReports]) -> None:
    """Every host drains at once, again and again, until the outbox is empty."""
    with trio.fail_after(30):
        while await queue.outbox(1):
            async with trio.open_nursery() as nursery:
                for reporter, shared in hosts:
                    nursery.start_soon(reporter.drain_once, shared)


async def test_two_hosts_draining_one_outbox_make_one_check_run_per_job(
    tmp_path: Path,
    queue: JobQueue,
    emulator: Emulator,
    api_url: str,
    app_key: rsa.RSAPrivateKey,
    redis_server: RedisServer,
    prefix: str,
) -> None:
    jobs = [new_job(emulator, f"build-{i}") for i in range(12)]
    args = (queue, api_url, app_key, redis_server.url, prefix)
    async with host("a", tmp_path, *args) as a, host("b", tmp_path, *args) as b:
        for job in jobs:
            await queue.enqueue(spec_of(job))
        await drain_together(queue, a, b)
        for job in jobs:
            await queue.mark_running(job.id, f"runner-{job.id}")
        await drain_together(queue, a, b)
        for job in jobs:
            await queue.finish(job.id, "success")
        await drain_together(queue, a, b)
    for job in jobs:
        (run,) = runs_for(emulator, job)
        assert run.status == "completed" and run.conclusion == "success"
        states = ["queued", "in_progress", "completed"]
        assert [states.index(w) for w in run.writes] == sorted(states.index(w) for w in run.writes)
    assert a[0].delivered + b[0].delivered >= 3 * len(jobs)
    assert a[0].delivered > 0 and b[0].delivered > 0  # both took part


async def test_a_copy_read_before_another_host_reported_a_newer_state_is_not_sent(
    tmp_path: Path,
    queue: JobQueue,
    emulator: Emulator,
    api_url: str,
    app_key: rsa.RSAPrivateKey,
    redis_server: RedisServer,
    prefix: str,
) -> None:
    job = new_job(emulator)
    args = (queue, api_url, app_key, redis_server.url, prefix)
    async with (
        host("a", tmp_path, *args) as (reporter_a, shared_a),
        host("b", tmp_path, *args) as (_, shared_b),
    ):
        await queue.enqueue(spec_of(job))
        await queue.mark_running(job.id, "runner-1")
        (stale,) = await queue.outbox(10)  # host b read it, then stalled
        assert stale.state is JobState.RUNNING
        await queue.finish(job.id, "success")
        assert await reporter_a.drain_once(shared_a) == 1
        (run,) = runs_for(emulator, job)
        assert run.writes == ["completed"]
        verdict, _ = await shared_b.take(stale)
        assert verdict is Verdict.DONE
    assert runs_for(emulator, job) == [run] and run.writes == ["completed"]


async def test_one_host_at_a_time_holds_a_jobs_turn(
    tmp_path: Path,
    queue: JobQueue,
    emulator: Emulator,
    redis_server: RedisServer,
    prefix: str,
) -> None:
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    (entry,) = await queue.outbox(10)
    r_a, r_b = (
        StreamRedis(redis_server.url, prefix=prefix),
        StreamRedis(redis_server.url, prefix=prefix),
    )
    a, b = FleetReports(r_a), FleetReports(r_b)
    try:
        verdict, token = await a.take(entry)
        assert verdict is Verdict.MINE
        assert (await b.take(entry))[0] is Verdict.BUSY
        await b.give_back(entry.job_id, "not-the-token")  # a wrong token frees nothing
        assert (await b.take(entry))[0] is Verdict.BUSY
        assert await a.keep(entry.job_id, token)
        assert not await b.keep(entry.job_id, "not-the-token")
        await a.give_back(entry.job_id, token)
        assert not await a.keep(entry.job_id, token)  # given back: nothing to renew
        assert (await b.take(entry))[0] is Verdict.MINE
    finally:
        await r_a.aclose()
        await r_b.aclose()


async def test_check_run_records_are_shared_and_a_final_one_outlives_forget(
    redis_server: RedisServer, prefix: str
) -> None:
    r, r_other = (
        StreamRedis(redis_server.url, prefix=prefix),
        StreamRedis(redis_server.url, prefix=prefix),
    )
    mine, other = FleetReports(r), FleetReports(r_other)
    try:
        assert await mine.get(7) is None
        await mine.mark_creating(7)
        seen = await other.get(7)
        assert seen is not None and seen.creating and seen.check_run_id is None
        await other.set_check_run(7, 99)
        await mine.set_started(7, 100.0)
        await other.set_started(7, 200.0)  # the first time stays
        got = await mine.get(7)
        assert got is not None
        assert (got.check_run_id, got.creating, got.started_at) == (99, False, 100.0)
        await mine.forget(7)
        key = r.key("checkrun", 7)
        assert await r.run(lambda c: c.ttl(key)) > 0
    finally:
        await r.aclose()
        await r_other.aclose()


async def test_a_slow_report_keeps_its_turn_and_one_that_lost_it_is_abandoned(
    tmp_path: Path,
    queue: JobQueue,
    emulator: Emulator,
    api_url: str,
    app_key: rsa.RSAPrivateKey,
    redis_server: RedisServer,
    prefix: str,
) -> None:
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    await queue.mark_running(job.id, "runner-1")
    await queue.finish(job.id, "success")
    (entry,) = await queue.outbox(10)
    never = trio.Event()

    async def stuck_usage(job_id: int) -> None:
        await never.wait()  # a report that takes as long as the test wants

    r_a, r_b = (
        StreamRedis(redis_server.url, prefix=prefix),
        StreamRedis(redis_server.url, prefix=prefix),
    )
    shared_a, shared_b = FleetReports(r_a, turn_ttl=0.3), FleetReports(r_b, turn_ttl=0.3)
    try:
        async with GitHubClient(api_url, AppAuth(app_id=str(APP_ID), key=app_key)) as client:
            reporter = StatusReporter(
                queue=queue,
                github=client,
                live=make_live(tmp_path, api_url),
                instance="a",
                usage=stuck_usage,
                shared=shared_a,
            )
            acked: list[int] = []
            drained = trio.Event()

            async def drain() -> None:
                acked.append(await reporter.drain_once(shared_a))
                drained.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await trio.sleep(1.0)  # over three turn lengths: only renewals kept it
                assert (await shared_b.take(entry))[0] is Verdict.BUSY
                turn = r_b.key("report-turn", job.id)
                await r_b.run(lambda c: c.delete(turn))  # expired while its holder stalled
                assert (await shared_b.take(entry))[0] is Verdict.MINE
                with trio.fail_after(10):
                    await drained.wait()
        assert acked == [0]  # abandoned: nothing acknowledged, nothing sent
        assert runs_for(emulator, job) == []
        assert [e.seq for e in await queue.outbox(10)] == [entry.seq]
    finally:
        await r_a.aclose()
        await r_b.aclose()


async def test_a_queue_error_while_holding_a_turn_leaves_the_entry_for_a_retry(
    tmp_path: Path,
    queue: JobQueue,
    emulator: Emulator,
    api_url: str,
    app_key: rsa.RSAPrivateKey,
    redis_server: RedisServer,
    prefix: str,
) -> None:
    """Redis gone between the report and its acknowledgement: the reporter logs and retries
    (the error must not escape grouped by the turn's nursery, which would stop the daemon)."""
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    failing = True
    real_ack = queue.ack_outbox

    async def ack_outbox(job_id: int, seq: int) -> None:
        if failing:
            raise QueueUnavailable("Redis unreachable: Connection closed by server.")
        await real_ack(job_id, seq)

    queue.ack_outbox = ack_outbox  # type: ignore[method-assign]
    args = (queue, api_url, app_key, redis_server.url, prefix)
    async with host("a", tmp_path, *args) as (reporter, shared):
        assert await reporter.drain_once(shared) == 0
        failing = False
        assert await reporter.drain_once(shared) == 1
    (run,) = runs_for(emulator, job)
    assert run.status == "queued"
    assert await queue.outbox(10) == []
