"""The reconciler against the GitHub stand-in: jobs whose deliveries were dropped are found
(REST sweep) or delivered again (App redelivery), and still run end to end."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.container.lifecycle import Runner
from agent.container.store import open_runner_store
from agent.demo import demo_stack
from agent.emulator import Emulator, serve_emulator
from agent.emulator.ratelimit import RateLimitPolicy
from agent.emulator.webhooks import Faults
from agent.github.actions import RateLimit
from agent.github.auth import AppAuth, Secret, TokenAuth
from agent.github.client import GitHubClient, RunnerTarget
from agent.orchestrator.reconciler import RateBudget, Reconciler
from agent.queue.base import EnqueueOutcome, JobState
from agent.queue.sqlite import open_sqlite_queue
from agent.reload import LiveConfig
from tests.conftest import remove_managed
from tests.orchestrator.conftest import SECRET, Intake, make_config
from tests.queue.queue_support import FakeClock

APP_ID = 4242
INSTALLATION = 1001


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def emulator(app_key: rsa.RSAPrivateKey, nursery: trio.Nursery) -> Emulator:
    emulator = Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations={INSTALLATION: ["octo-org/app", "octo-org/lib"]},
        seed=4,
    )
    await nursery.start(serve_emulator, emulator)
    return emulator


@pytest.fixture
async def github(emulator: Emulator, app_key: rsa.RSAPrivateKey) -> AsyncIterator[GitHubClient]:
    auth = AppAuth(app_id=str(APP_ID), key=app_key)
    async with GitHubClient(emulator.base_url, auth) as client:
        yield client


def finished(emulator: Emulator) -> int:
    return sum(d.status != "pending" for d in emulator.deliveries)


async def create_dropped(emulator: Emulator, repository: str, labels: list[str]) -> int:
    """Queue a job at GitHub whose ``queued`` delivery is lost (the drop fault), and wait until
    GitHub has recorded that failed attempt."""
    emulator.faults = Faults(drop_rate=1.0)
    job = emulator.create_job(repository, labels, "echo recovered")
    with trio.fail_after(10):
        while not any(
            d.outgoing.job_id == job.id and d.status != "pending" for d in emulator.deliveries
        ):  # the attempts before it (a ping), then its own
            await emulator.wait_deliveries(finished(emulator) + 1)
    emulator.faults = Faults()
    mine = [d for d in emulator.deliveries if d.outgoing.job_id == job.id]
    assert [d.status for d in mine] == ["failed to connect to host"]
    return job.id


async def test_sweep_enqueues_unknown_matching_queued_jobs_once(
    emulator: Emulator, github: GitHubClient, intake: Intake
) -> None:
    emulator.add_hook(intake.url + "/webhook", SECRET)
    lost = await create_dropped(emulator, "octo-org/app", ["self-hosted", "linux"])
    hosted = await create_dropped(emulator, "octo-org/app", ["ubuntu-latest"])
    other_repo = await create_dropped(emulator, "octo-org/lib", ["self-hosted"])
    before = finished(emulator)
    delivered = emulator.create_job("octo-org/app", ["self-hosted"], "true")
    with trio.fail_after(10):
        await emulator.wait_deliveries(before + 1)
    assert (await intake.queue.get(delivered.id)) is not None
    reconciler = Reconciler(live=intake.live, queue=intake.queue, github=github)

    # The sweep alone (reconcile_once would also have the App's failed deliveries redelivered).
    assert (await reconciler.sweep_queued_jobs()) == 1  # octo-org/lib: not configured, not seen
    entry = await intake.queue.get(lost)
    assert entry is not None and entry.state is JobState.QUEUED and entry.spec.pool == "default"
    assert entry.spec.installation_id == INSTALLATION
    assert await intake.queue.get(hosted) is None and await intake.queue.get(other_repo) is None
    reconciler.seen.add("octo-org/lib", INSTALLATION)  # what intake reports for served jobs
    assert (await reconciler.sweep_queued_jobs()) == 1
    assert (await reconciler.sweep_queued_jobs()) == 0  # idempotent
    leases = await intake.queue.claim(10, lease_seconds=60)
    assert sorted(lease.job_id for lease in leases) == sorted([lost, other_repo, delivered.id])


def with_github(live: LiveConfig, **changes: Any) -> LiveConfig:
    """The same configuration with ``[github]`` keys changed (as a reload would)."""
    current = live.current
    return LiveConfig(
        dataclasses.replace(current, github=dataclasses.replace(current.github, **changes))
    )


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real transport, remembering the path of every request sent."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


async def settled(emulator: Emulator, job_id: int, n: int) -> None:
    """Until GitHub has tried the job's first ``n`` deliveries (lost under the drop fault); the
    fault is lifted after."""
    with trio.fail_after(10):
        while (
            len(
                [
                    d
                    for d in emulator.deliveries
                    if d.outgoing.job_id == job_id and d.status != "pending"
                ]
            )
            < n
        ):
            await emulator.wait_deliveries(finished(emulator) + 1)
    emulator.faults = Faults()


async def test_sweep_holds_a_lost_job_waiting_for_approval_and_queues_it_once_approved(
    emulator: Emulator, github: GitHubClient, intake: Intake
) -> None:
    emulator.add_hook(intake.url + "/webhook", SECRET)
    emulator.add_environment("octo-org/app", "production", required_reviewers=True)
    emulator.faults = Faults(drop_rate=1.0)
    job = emulator.create_job(
        "octo-org/app", ["self-hosted", "linux"], "true", environment="production"
    )
    await settled(emulator, job.id, 2)  # queued (status waiting) and waiting, both lost
    reconciler = Reconciler(live=intake.live, queue=intake.queue, github=github)
    assert await reconciler.sweep_queued_jobs() == 1
    entry = await intake.queue.get(job.id)
    assert entry is not None and entry.state is JobState.HELD
    assert await intake.queue.claim(10, lease_seconds=60) == []
    emulator.faults = Faults(drop_rate=1.0)  # the post-approval queued is lost too
    emulator.review_job(job.id, approve=True)
    await settled(emulator, job.id, 3)
    assert await reconciler.sweep_queued_jobs() == 1
    assert await reconciler.sweep_queued_jobs() == 0
    leases = await intake.queue.claim(10, lease_seconds=60)
    assert [lease.job_id for lease in leases] == [job.id]


async def test_sweep_covers_the_repositories_of_configured_organizations(
    emulator: Emulator, app_key: rsa.RSAPrivateKey, intake: Intake
) -> None:
    emulator.add_hook(intake.url + "/webhook", SECRET)
    only_via_org = await create_dropped(emulator, "octo-org/lib", ["self-hosted", "linux"])
    configured = await create_dropped(emulator, "octo-org/app", ["self-hosted", "linux"])
    live = with_github(intake.live, repositories=("octo-org/app",), organizations=("octo-org",))
    recorder = RecordingTransport()
    auth = AppAuth(app_id=str(APP_ID), key=app_key)
    async with GitHubClient(emulator.base_url, auth, transport=recorder) as github:
        reconciler = Reconciler(live=live, queue=intake.queue, github=github)
        assert (await reconciler.sweep_queued_jobs()) == 2
        entry = await intake.queue.get(only_via_org)
        assert entry is not None and entry.state is JobState.QUEUED
        assert entry.spec.installation_id == INSTALLATION  # the organization's installation
        assert await intake.queue.get(configured) is not None
        assert "/orgs/octo-org/installation" in recorder.paths
        assert "/installation/repositories" in recorder.paths
        # octo-org/app is configured and in the organization: swept once per pass.
        runs = [p for p in recorder.paths if p.endswith("/actions/runs")]
        assert (
            sorted(runs)
            == ["/repos/octo-org/app/actions/runs"] * 3 + ["/repos/octo-org/lib/actions/runs"] * 3
        )  # queued, in_progress and waiting
        assert (await reconciler.sweep_queued_jobs()) == 0


async def test_with_a_token_the_sweep_lists_the_organizations_repositories(
    emulator: Emulator, intake: Intake
) -> None:
    emulator.add_hook(intake.url + "/webhook", SECRET)
    job_id = await create_dropped(emulator, "octo-org/lib", ["self-hosted"])
    pat = TokenAuth(token=Secret(emulator.add_personal_token(INSTALLATION)))
    live = with_github(intake.live, repositories=(), organizations=("octo-org", "gone-org"))
    async with GitHubClient(emulator.base_url, pat) as github:
        reconciler = Reconciler(live=live, queue=intake.queue, github=github)
        assert (await reconciler.sweep_queued_jobs()) == 1  # gone-org: 404, logged, skipped
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.spec.installation_id is None


async def test_failed_app_deliveries_are_redelivered_with_their_guid(
    emulator: Emulator, github: GitHubClient, intake: Intake
) -> None:
    emulator.add_hook(intake.url + "/webhook", SECRET)
    job_id = await create_dropped(emulator, "octo-org/app", ["self-hosted", "linux"])
    failed = emulator.deliveries[-1]
    live = with_github(intake.live, repositories=())
    reconciler = Reconciler(live=live, queue=intake.queue, github=github)
    assert await intake.queue.get(job_id) is None

    before = finished(emulator)
    assert (await reconciler.redeliver_failed()) == 1  # the job's, not the (dropped) ping
    with trio.fail_after(10):
        attempts = await emulator.wait_deliveries(before + 1)
    again = attempts[-1]
    assert (again.outgoing.guid, again.redelivery, again.status) == (
        failed.outgoing.guid,
        True,
        "OK",
    )
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.QUEUED
    assert (await reconciler.redeliver_failed()) == 0  # the GUID has an OK attempt now
    outcome = await intake.queue.enqueue(entry.spec, delivery_id=failed.outgoing.guid)
    assert outcome is EnqueueOutcome.DUPLICATE_DELIVERY


def test_rate_budget_keeps_the_reserve_per_quota() -> None:
    budget = RateBudget(0.25)
    assert budget.allows("installation:1")  # nothing known yet
    budget.spend("installation:1", RateLimit(limit=5000, remaining=3751))
    assert budget.allows("installation:1")
    budget.spend("installation:1", RateLimit(limit=5000, remaining=3750))
    assert not budget.allows("installation:1")  # 75 % of the quota stays for provisioning
    assert budget.allows("app")  # another quota
    budget.spend("token", RateLimit(limit=None, remaining=None))  # GHES: no limits
    assert budget.allows("token") and budget.spent == 3


async def test_the_sweep_stays_within_its_share_of_the_rate_limit(
    emulator: Emulator, github: GitHubClient, intake: Intake
) -> None:
    emulator.rate_limits.policy = RateLimitPolicy(limit=40)
    for _ in range(20):  # 20 runs, their queued deliveries all lost: 22 listing requests
        emulator.create_job("octo-org/app", ["self-hosted"], "true")
    reconciler = Reconciler(live=intake.live, queue=intake.queue, github=github)

    report = await reconciler.reconcile_once()  # reconcile_rate_share = 0.25: 10 of 40

    assert report.stopped_by_budget
    assert 0 < report.enqueued < 20
    assert emulator.rate_limits.over_primary == 0  # never pushed into a refusal either


def _runner(name: str) -> Runner:
    target = RunnerTarget(repository="octo-org/app")
    return Runner(name=name, pool="default", target=target, installation_id=None,
                  labels=("self-hosted",), created_at=0.0)  # fmt: skip


async def test_the_prune_pass_drops_job_usage_with_the_queues_retention(tmp_path: Path) -> None:
    clock = FakeClock()
    config = make_config(tmp_path)
    retention = config.queue.retention
    async with (
        open_sqlite_queue(config.queue_path, clock=clock) as queue,
        open_runner_store(config.server.state_dir, clock=clock) as store,
    ):
        await queue.finish(1, "success")  # job 1 finished and was reported long ago
        await store.record_usage(_runner("old"), 1)
        clock.advance(retention)
        await queue.finish(2, "success")  # job 2 just now
        await store.record_usage(_runner("recent"), 2)
        clock.advance(1)
        reconciler = Reconciler(
            live=LiveConfig(config), queue=queue, runner_store=store, clock=clock
        )

        report = await reconciler.reconcile_once()

        assert (report.pruned, report.pruned_usage) == (1, 1)
        assert await queue.get(1) is None and await store.usage(1) is None
        assert await queue.get(2) is not None
        kept = await store.usage(2)
        assert kept is not None and kept.runner == "recent"
        assert (await reconciler.reconcile_once()).pruned_usage == 0


# ---- end to end: a dropped delivery, and the job still runs ----------------------------------


@pytest.mark.docker
async def test_a_job_whose_webhook_was_dropped_still_runs(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    async with demo_stack(tmp_path) as stack:
        try:
            emulator, daemon = stack.emulator, stack.daemon
            with trio.fail_after(10):
                await emulator.wait_deliveries(1)  # the ping
            job_id = await create_dropped(emulator, "octo-org/app", ["self-hosted", "linux"])
            assert daemon.reconciler is not None and daemon.queue is not None
            assert await daemon.queue.get(job_id) is None
            report = await daemon.reconciler.reconcile_once()
            assert report.enqueued + report.redelivered >= 1
            with trio.fail_after(120):
                job = await emulator.wait_job(job_id, "completed")
            assert job.conclusion == "success"
            assert (job.runner_name or "").startswith("gantryd-")
        finally:
            remove_managed(docker_client, stack.instance)


@pytest.mark.docker
async def test_a_dropped_job_of_a_repository_known_only_through_its_organization_runs(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    async with demo_stack(tmp_path) as stack:
        try:
            emulator, daemon = stack.emulator, stack.daemon
            with trio.fail_after(10):
                await emulator.wait_deliveries(1)  # the ping
            job_id = await create_dropped(emulator, "octo-org/lib", ["self-hosted", "linux"])
            assert daemon.reconciler is not None and daemon.queue is not None
            config = daemon.live.current  # no repositories; intake has seen none
            assert not config.github.repositories and not daemon.reconciler.seen.snapshot()
            daemon.live.current = dataclasses.replace(
                config, github=dataclasses.replace(config.github, organizations=("octo-org",))
            )
            assert (await daemon.reconciler.sweep_queued_jobs()) == 1
            with trio.fail_after(120):
                job = await emulator.wait_job(job_id, "completed")
            assert job.conclusion == "success"
            assert (job.runner_name or "").startswith("gantryd-")
        finally:
            remove_managed(docker_client, stack.instance)


@pytest.mark.docker
async def test_a_runner_that_takes_another_job_moves_the_association(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """docs/design.md §1: job A's queued delivery is lost; B's runner takes A (GitHub's choice,
    oldest first); gantryd then serves B with a new runner and serves A exactly once."""
    async with demo_stack(tmp_path) as stack:
        try:
            emulator, daemon = stack.emulator, stack.daemon
            with trio.fail_after(10):
                await emulator.wait_deliveries(1)
            a = await create_dropped(emulator, "octo-org/app", ["self-hosted", "linux"])
            b = emulator.create_job("octo-org/app", ["self-hosted", "linux"], "echo b").id
            with trio.fail_after(120):
                job_a = await emulator.wait_job(a, "completed")
                job_b = await emulator.wait_job(b, "completed")
            assert daemon.queue is not None
            entry_b = await daemon.queue.get(b)
            assert entry_b is not None
            assert job_a.runner_name != job_b.runner_name  # B ran on a second runner
            assert (job_a.conclusion, job_b.conclusion) == ("success", "success")
            entry_a = await daemon.queue.get(a)
            assert entry_a is not None and entry_a.state is JobState.DONE
            assert daemon.reconciler is not None
            assert (await daemon.reconciler.sweep_queued_jobs()) == 0  # nothing left to serve
        finally:
            remove_managed(docker_client, stack.instance)
