"""The whole stack against a misbehaving GitHub: 5xx answers and 429 bursts (docs/design.md §7).

Real Docker, the stand-in runner image, gantryd as `gantryd serve` runs it (agent/demo.py).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
import trio

from agent.config import load_config
from agent.container.lifecycle import Outcome
from agent.demo import INSTALLATION_ID, Stack, demo_stack
from agent.emulator import Faults
from agent.emulator.checks import CheckRun
from agent.emulator.ratelimit import RateLimitPolicy
from agent.ops import protocol
from agent.ops.admin_client import AdminClient
from agent.ops.protocol import socket_path
from agent.queue.base import JobState
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import wait_entry

pytestmark = pytest.mark.docker

CLIENT_CONCURRENCY = 8  # [github] max_concurrency's default, which the demo config keeps


@pytest.fixture
async def stack(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> AsyncIterator[Stack]:
    async with demo_stack(tmp_path) as running:
        try:
            yield running
        finally:
            remove_managed(docker_client, running.instance)


async def test_jobs_run_and_check_runs_finish_despite_5xx_and_429_bursts(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    emulator = stack.emulator
    emulator.faults = Faults(server_error_rate=0.2)
    emulator.rate_limits.policy = RateLimitPolicy(burst_rate=0.1, burst_seconds=1)
    emulator.rate_limits.open_burst(f"installation {INSTALLATION_ID}", 3)
    jobs = [
        emulator.create_job(repo, ["self-hosted", "linux"], f"echo {i}", name=f"job-{i}")
        for i, repo in enumerate(["octo-org/app", "octo-org/lib"] * 3)
    ]

    def finished() -> bool:
        for job in jobs:
            runs = [r for r in emulator.checks.runs.values() if r.external_id == str(job.id)]
            if len(runs) != 1 or runs[0].status != "completed":
                return False
        return True

    with trio.fail_after(180):
        for job in jobs:
            await emulator.wait_job(job.id, "completed")
        await emulator.checks.wait_until(finished)
    assert [emulator.job(j.id).conclusion for j in jobs] == ["success"] * len(jobs)
    runs = list(emulator.checks.runs.values())
    assert len(runs) == len(jobs)  # one per job, however often a report was retried
    assert {r.conclusion for r in runs} == {"success"}
    assert all("Ran on host" in r.output["summary"] for r in runs)
    limits = emulator.rate_limits
    assert limits.over_primary == 0 and limits.over_concurrency == 0
    # Inside a 429 burst only requests already in flight may arrive; gantryd met the first.
    assert limits.burst_arrivals[0] >= 1 and max(limits.burst_arrivals) <= CLIENT_CONCURRENCY
    assert stack.daemon.pools is not None
    with trio.fail_after(30):
        await stack.daemon.pools.wait_no_runners()
    assert managed_containers(docker_client, stack.instance) == []


async def test_long_prefix_and_instance_still_register_runners(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """32-character prefix and instance would make 74-character names; GitHub refuses past 64."""
    instance = "host-" + secrets.token_hex(2) + "x" * 23
    async with demo_stack(tmp_path, instance=instance, runner_prefix="p" * 32) as stack:
        try:
            emulator = stack.emulator
            job = emulator.create_job("octo-org/app", ["self-hosted", "linux"], "true")
            with trio.fail_after(120):
                await emulator.wait_job(job.id, "completed")
            ran = emulator.job(job.id)
            assert ran.conclusion == "success"
            assert ran.runner_name is not None and len(ran.runner_name) <= 64
        finally:
            remove_managed(docker_client, instance)


async def admin_status(stack: Stack) -> protocol.Status:
    """What ``gantryd status`` shows, through the daemon's admin socket."""
    client = AdminClient(socket_path(load_config(stack.config_path).server.runtime_dir))
    return await trio.to_thread.run_sync(client.call, protocol.get_status())


def check_runs(stack: Stack, job_id: int) -> list[CheckRun]:
    return [r for r in stack.emulator.checks.runs.values() if r.external_id == str(job_id)]


async def test_a_job_behind_an_approval_is_held_then_runs_once(stack: Stack) -> None:
    emulator = stack.emulator
    assert stack.daemon.pools is not None
    created = stack.daemon.pools.stats.outcomes
    emulator.add_environment("octo-org/app", "production", required_reviewers=True)
    job = emulator.create_job(
        "octo-org/app", ["self-hosted", "linux"], "echo deployed", environment="production"
    )

    def says_waiting() -> bool:
        runs = check_runs(stack, job.id)
        return len(runs) == 1 and runs[0].output.get("title") == "Waiting for approval"

    with trio.fail_after(60):
        await emulator.checks.wait_until(says_waiting)
    assert created[Outcome.CREATED] == 0  # no runner while the reviewers have not approved
    status = await admin_status(stack)
    assert status.queue.by_state.get(JobState.HELD) == 1
    assert [(j.id, j.state) for j in status.queue.jobs] == [(job.id, JobState.HELD)]
    emulator.review_job(job.id, approve=True)

    def finished() -> bool:
        runs = check_runs(stack, job.id)
        return len(runs) == 1 and runs[0].status == "completed"

    with trio.fail_after(120):
        await emulator.wait_job(job.id, "completed")
        await emulator.checks.wait_until(finished)
    assert emulator.job(job.id).conclusion == "success"
    assert check_runs(stack, job.id)[0].conclusion == "success"
    assert created[Outcome.CREATED] == 1


async def test_a_rejected_job_is_dropped_without_a_runner(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    emulator = stack.emulator
    assert stack.daemon.pools is not None and stack.daemon.queue is not None
    emulator.add_environment("octo-org/app", "production", required_reviewers=True)
    job = emulator.create_job(
        "octo-org/app", ["self-hosted", "linux"], "true", environment="production"
    )
    with trio.fail_after(60):
        await wait_entry(stack.daemon.queue, job.id, JobState.HELD)
    emulator.review_job(job.id, approve=False)
    with trio.fail_after(60):
        await wait_entry(stack.daemon.queue, job.id, JobState.DONE)
    assert stack.daemon.pools.stats.outcomes[Outcome.CREATED] == 0
    assert managed_containers(docker_client, stack.instance) == []


async def test_a_rerun_gets_a_check_run_of_its_own(stack: Stack) -> None:
    emulator = stack.emulator
    first = emulator.create_job("octo-org/app", ["self-hosted", "linux"], "true", name="build")
    with trio.fail_after(120):
        await emulator.wait_job(first.id, "completed")
    again = emulator.rerun_job(first.id)
    assert again.run_attempt == 2

    def both_finished() -> bool:
        runs = check_runs(stack, first.id) + check_runs(stack, again.id)
        return len(runs) == 2 and all(r.status == "completed" for r in runs)

    with trio.fail_after(120):
        await emulator.wait_job(again.id, "completed")
        await emulator.checks.wait_until(both_finished)
    names = [check_runs(stack, j.id)[0].name for j in (first, again)]
    assert names == ["gantryd: CI / build (attempt 1)", "gantryd: CI / build (attempt 2)"]
