"""The status reporter draining a real SQLite queue's outbox into the emulator (check runs,
commit statuses, cancels), and surviving kill -9 mid-drain."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
)
from agent.container.store import JobUsage
from agent.emulator import Emulator, serve_emulator
from agent.emulator.checks import CheckRun
from agent.emulator.models import Job
from agent.github.auth import AppAuth, Secret, TokenAuth
from agent.github.client import GitHubClient
from agent.github.ratelimit import ContentPacer
from agent.github.report_store import ReportStore, open_report_store
from agent.orchestrator.status_reporter import HoldLookup, StatusReporter, UsageLookup
from agent.queue.base import JobSpec, RetryPolicy
from agent.queue.sqlite import SQLiteQueue, open_sqlite_queue
from agent.reload import LiveConfig

ROOT = Path(__file__).resolve().parents[2]
APP_ID = 4242
INSTALLATION = 11
POOL = PoolConfig(name="default", labels=("self-hosted", "linux"), memory=512 * 1024**2)


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def emulator(app_key: rsa.RSAPrivateKey) -> Emulator:
    return Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations={INSTALLATION: ["acme/app", "acme/lib"]},
        seed=3,
    )


@pytest.fixture
async def api_url(emulator: Emulator, nursery: trio.Nursery) -> str:
    url: str = await nursery.start(serve_emulator, emulator)
    return url


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SQLiteQueue]:
    async with open_sqlite_queue(tmp_path / "queue.db", retry=RetryPolicy(attempts=0)) as q:
        yield q


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ReportStore]:
    async with open_report_store(tmp_path / "reporter.db") as s:
        yield s


def make_live(tmp_path: Path, api_url: str, **github: object) -> LiveConfig:
    return LiveConfig(
        Config(
            path=tmp_path / "config.toml",
            server=ServerConfig(state_dir=tmp_path, instance="build-1"),
            github=replace(GitHubConfig(api_url=api_url, app_id=str(APP_ID)), **github),  # type: ignore[arg-type]
            queue=QueueConfig(),
            scheduler=SchedulerConfig(),
            pools=(POOL,),
        )
    )


@asynccontextmanager
async def reporter_for(
    tmp_path: Path,
    queue: SQLiteQueue,
    api_url: str,
    auth: AppAuth | TokenAuth,
    *,
    usage: UsageLookup | None = None,
    holds: HoldLookup | None = None,
    clock: Callable[[], float] = time.time,
    **github: object,
) -> AsyncIterator[StatusReporter]:
    async with GitHubClient(api_url, auth) as client:
        yield StatusReporter(
            queue=queue,
            github=client,
            live=make_live(tmp_path, api_url, **github),
            instance="build-1",
            usage=usage,
            holds=holds,
            pacer=ContentPacer(per_minute=1000, per_hour=1000),
            clock=clock,
        )


def spec_of(job: Job) -> JobSpec:
    return JobSpec(
        job_id=job.id,
        run_id=job.run_id,
        run_attempt=1,
        repository=job.repository.full_name,
        installation_id=INSTALLATION,
        labels=job.labels,
        pool="default",
        name=job.name,
        head_sha=job.head_sha,
        html_url=f"https://github.com/{job.repository.full_name}/actions/runs/{job.run_id}",
    )


def runs_for(emulator: Emulator, job: Job) -> list[CheckRun]:
    return [r for r in emulator.checks.runs.values() if r.external_id == str(job.id)]


@pytest.fixture
def app_auth(app_key: rsa.RSAPrivateKey) -> AppAuth:
    return AppAuth(app_id=str(APP_ID), key=app_key)


def new_job(emulator: Emulator, name: str = "build") -> Job:
    return emulator.create_job("acme/app", ["self-hosted", "linux"], "true", name=name)


async def test_one_check_run_per_job_through_its_states(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
) -> None:
    ahead, job = new_job(emulator, "ahead"), new_job(emulator)
    used = JobUsage(
        job_id=job.id,
        runner="gantryd-build-1-ab12cd34",
        pool="default",
        peak_memory=200 * 1024**2,
        cpu_seconds=3.5,
        oom_killed=False,
        reason=None,
        image_digest=None,
    )

    async def usage(job_id: int) -> JobUsage | None:
        return used if job_id == job.id else None

    async with reporter_for(tmp_path, queue, api_url, app_auth, usage=usage) as reporter:
        await queue.enqueue(spec_of(ahead))
        await queue.enqueue(spec_of(job))
        assert await reporter.drain_once(store) == 2
        (run,) = runs_for(emulator, job)
        assert run.name == "gantryd: build (attempt 1)" and run.head_sha == job.head_sha
        assert run.status == "queued"
        assert run.output["title"] == "Queued in default, position 2"
        assert "pool `default`" in run.output["summary"]

        await queue.mark_running(job.id, "gantryd-build-1-ab12cd34")
        assert await reporter.drain_once(store) == 1
        assert run.status == "in_progress" and run.started_at
        summary = run.output["summary"]
        assert "host `build-1`" in summary and "container `gantryd-build-1-ab12cd34`" in summary
        assert "512.0 MiB memory, 1 CPU, 4096 processes" in summary

        await queue.finish(job.id, "success")
        assert await reporter.drain_once(store) == 1
    assert runs_for(emulator, job) == [run]
    assert run.writes == ["queued", "in_progress", "completed"]
    assert run.conclusion == "success" and run.completed_at
    assert "- queue wait: " in run.output["summary"]
    assert "- duration: " in run.output["summary"]
    assert "- peak memory: 200.0 MiB of 512.0 MiB" in run.output["summary"]
    assert "- CPU time: 3.5s" in run.output["summary"]
    assert [e.job_id for e in await queue.outbox(10)] == []
    assert await store.get(job.id) is None  # final report delivered: nothing left to remember


async def test_a_held_pool_shows_its_reason_on_the_check_runs_of_its_queued_jobs(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
) -> None:
    """The hold (exit 7: outdated image) changes no job's state, yet the check runs of the
    pool's queued jobs say why they wait, and say it no more once the hold ends."""
    held: dict[str, str] = {}
    waiting, later = new_job(emulator, "waiting"), new_job(emulator, "later")
    reason = "image r:latest is outdated: GitHub refused its runner version (exit 7)"
    async with reporter_for(tmp_path, queue, api_url, app_auth, holds=held.get) as reporter:
        await queue.enqueue(spec_of(waiting))
        assert await reporter.drain_once(store) == 1
        assert await reporter.sync_holds(store) == 0  # nothing held: nothing more to say
        (run,) = runs_for(emulator, waiting)
        assert run.output["title"] == "Queued in default, position 1"
        held["default"] = reason
        assert await reporter.sync_holds(store) == 1  # the job queued before the hold
        assert run.status == "queued"
        assert run.output["title"] == f"Held: {reason}"
        assert reason in run.output["summary"] and "no attempt is counted" in run.output["summary"]
        assert await reporter.sync_holds(store) == 0  # said once
        await queue.enqueue(spec_of(later))  # a job arriving while held says so at once
        assert await reporter.drain_once(store) == 1
        (other,) = runs_for(emulator, later)
        assert other.output["title"] == f"Held: {reason}"
        del held["default"]
        assert await reporter.sync_holds(store) == 2
    assert run.output["title"] == "Queued in default, position 1"
    assert other.output["title"] == "Queued in default, position 2"


async def test_final_report_waits_briefly_for_usage_figures(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
) -> None:
    """The pool records usage as the container exits, often just after `completed` arrived."""
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    await queue.mark_running(job.id, "r1")
    await queue.finish(job.id, "success")

    async def none_yet(job_id: int) -> JobUsage | None:
        return None

    async with reporter_for(tmp_path, queue, api_url, app_auth, usage=none_yet) as reporter:
        assert await reporter.drain_once(store) == 0
    assert runs_for(emulator, job) == []
    later = lambda: time.time() + 11  # noqa: E731 - past the wait: report without the figures
    async with reporter_for(
        tmp_path, queue, api_url, app_auth, usage=none_yet, clock=later
    ) as reporter:
        assert await reporter.drain_once(store) == 1
    (run,) = runs_for(emulator, job)
    assert run.conclusion == "success" and "peak memory" not in run.output["summary"]


async def test_latest_state_wins(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
) -> None:
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    await queue.mark_running(job.id, "r1")
    await queue.finish(job.id, "failure")
    async with reporter_for(tmp_path, queue, api_url, app_auth) as reporter:
        assert await reporter.drain_once(store) == 1
    (run,) = runs_for(emulator, job)
    assert run.writes == ["completed"] and run.conclusion == "failure"


async def test_gantryd_failure_is_reported_plainly_and_the_run_cancelled(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
) -> None:
    emulator._installations[INSTALLATION].permissions["actions"] = "write"
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    (lease,) = await queue.claim(1, lease_seconds=60)
    await queue.fail(lease, 'image "acme/runner:1" not found locally and pull_policy is "never"')
    async with reporter_for(tmp_path, queue, api_url, app_auth, cancel_dead_jobs=True) as reporter:
        assert await reporter.drain_once(store) == 1
    (run,) = runs_for(emulator, job)
    assert run.conclusion == "failure"
    assert run.output["title"].startswith("gantryd could not run this job: image")
    assert 'pull_policy is "never"' in run.output["summary"]
    assert emulator.checks.cancelled_runs == [job.run_id]
    assert emulator.job(job.id).conclusion == "cancelled"


async def test_token_auth_reports_commit_statuses(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
) -> None:
    token = TokenAuth(Secret(emulator.add_personal_token(INSTALLATION)))
    job = new_job(emulator)
    spec = replace(spec_of(job), installation_id=None)
    async with reporter_for(tmp_path, queue, api_url, token) as reporter:
        await queue.enqueue(spec)
        await reporter.drain_once(store)
        await queue.mark_running(job.id, "r1")
        await reporter.drain_once(store)
        await queue.finish(job.id, "success")
        await reporter.drain_once(store)
    statuses = emulator.checks.statuses_of("acme/app", job.head_sha)
    context = f"gantryd: build (attempt 1, job {job.id})"
    assert [(s.context, s.state) for s in statuses] == [
        (context, "pending"),
        (context, "pending"),
        (context, "success"),
    ]
    assert statuses[0].description == "Queued in default, position 1"
    assert statuses[-1].target_url == spec.html_url
    assert emulator.checks.runs == {}


async def test_two_jobs_of_one_commit_keep_two_statuses(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
) -> None:
    """Token mode: GitHub keeps the latest status per (sha, context); each job has its own
    context, so one job finishing does not overwrite the other's status on the commit."""
    token = TokenAuth(Secret(emulator.add_personal_token(INSTALLATION)))
    build = new_job(emulator)
    lint = emulator.create_job(
        "acme/app", ["self-hosted", "linux"], "true", name="lint", run_id=build.run_id
    )
    assert lint.head_sha == build.head_sha
    async with reporter_for(tmp_path, queue, api_url, token) as reporter:
        for job in (build, lint):
            await queue.enqueue(replace(spec_of(job), installation_id=None))
        assert await reporter.drain_once(store) == 2
        await queue.mark_running(build.id, "r1")
        await queue.finish(build.id, "failure")
        assert await reporter.drain_once(store) == 1
    latest = emulator.checks.latest_statuses("acme/app", build.head_sha)
    assert sorted((s.context, s.state) for s in latest) == [
        (f"gantryd: build (attempt 1, job {build.id})", "failure"),
        (f"gantryd: lint (attempt 1, job {lint.id})", "pending"),
    ]


@pytest.mark.parametrize(("mode", "expected"), [("failures", 1), ("off", 0)])
async def test_reporting_failures_or_off(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
    mode: str,
    expected: int,
) -> None:
    fine, dead = new_job(emulator, "fine"), new_job(emulator, "dead")
    for job in (fine, dead):
        await queue.enqueue(spec_of(job))
    await queue.finish(fine.id, "success")
    (lease,) = await queue.claim(1, lease_seconds=60)
    await queue.fail(lease, "container never started")
    async with reporter_for(tmp_path, queue, api_url, app_auth, reporting=mode) as reporter:
        assert await reporter.drain_once(store) == 2
    assert runs_for(emulator, fine) == []
    assert len(runs_for(emulator, dead)) == expected
    assert await queue.outbox(10) == []


async def test_missing_permission_keeps_the_entry_and_says_what_to_grant(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
    caplog: pytest.LogCaptureFixture,
) -> None:
    permissions = emulator._installations[INSTALLATION].permissions
    permissions.pop("checks")
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    async with reporter_for(tmp_path, queue, api_url, app_auth) as reporter:
        with caplog.at_level(logging.ERROR):
            assert await reporter.drain_once(store) == 0
    assert 'grant the GitHub App the "checks: write" permission' in caplog.text
    assert [e.job_id for e in await queue.outbox(10)] == [job.id]
    permissions["checks"] = "write"  # granted; tokens issued from now on carry it
    fresh = AppAuth(app_id=app_auth.app_id, key=app_auth.key)
    async with reporter_for(tmp_path, queue, api_url, fresh) as reporter:
        assert await reporter.drain_once(store) == 1
    assert len(runs_for(emulator, job)) == 1


async def test_creation_lost_in_a_crash_is_adopted_not_repeated(
    tmp_path: Path,
    queue: SQLiteQueue,
    store: ReportStore,
    emulator: Emulator,
    api_url: str,
    app_auth: AppAuth,
) -> None:
    """gantryd died after GitHub created the check run, before its id was stored."""
    job = new_job(emulator)
    await queue.enqueue(spec_of(job))
    await store.mark_creating(job.id)
    emulator.checks.create_run(
        "acme/app",
        {
            "name": "gantryd: build (attempt 1)",
            "head_sha": job.head_sha,
            "external_id": str(job.id),
        },
        "",
    )
    await queue.finish(job.id, "success")
    async with reporter_for(tmp_path, queue, api_url, app_auth) as reporter:
        assert await reporter.drain_once(store) == 1
    (run,) = runs_for(emulator, job)
    assert run.writes == ["queued", "completed"]


async def test_sigkill_mid_drain_then_restart_delivers_every_job_once(
    tmp_path: Path,
    queue: SQLiteQueue,
    emulator: Emulator,
    api_url: str,
    app_key: rsa.RSAPrivateKey,
) -> None:
    key = tmp_path / "app.pem"
    key.write_bytes(
        app_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    emulator.faults = replace(emulator.faults, server_error_rate=0.1)  # some retries mid-drain
    jobs = [new_job(emulator, f"job-{i}") for i in range(60)]
    for i, job in enumerate(jobs):
        await queue.enqueue(spec_of(job))
        await queue.mark_running(job.id, f"r{i}")
        if i % 2:
            await queue.finish(job.id, "success" if i % 3 else "failure")
    command = [
        sys.executable,
        str(ROOT / "tests/orchestrator/reporter_child.py"),
        str(tmp_path / "queue.db"),
        str(tmp_path),
        api_url,
        str(key),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def final(job: Job, i: int) -> bool:
        runs = runs_for(emulator, job)
        want = "in_progress" if i % 2 == 0 else "completed"
        return len(runs) == 1 and runs[0].status == want

    with trio.fail_after(60):
        child = await trio.lowlevel.open_process(command, env=env, stderr=subprocess.DEVNULL)
        try:
            await emulator.checks.wait_until(lambda: len(emulator.checks.runs) >= 15)
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        assert child.returncode == -signal.SIGKILL
        killed_at = len(emulator.checks.runs)
        assert killed_at < len(jobs), "the child finished before it was killed"
        # Entries done before the kill may be re-sent (acknowledged only after GitHub said
        # yes), but never as a second check run.
        child = await trio.lowlevel.open_process(command, env=env, stderr=subprocess.DEVNULL)
        try:
            await emulator.checks.wait_until(
                lambda: all(final(job, i) for i, job in enumerate(jobs))
            )
            # The acks are the other process's writes: nothing here to wait on but the file.
            while await queue.outbox(1):  # noqa: ASYNC110
                await trio.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
    assert len(emulator.checks.runs) == len(jobs)
    for i, job in enumerate(jobs):
        (run,) = runs_for(emulator, job)
        if i % 2:
            assert run.conclusion == ("success" if i % 3 else "failure")
