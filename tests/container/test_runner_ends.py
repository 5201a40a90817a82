"""How runners end, against the GitHub stand-in, the official-like image and the real Engine.

A runner GitHub refuses as deprecated exits 7 (gantryd sets
``ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1``): its pool's image is marked outdated,
the job goes back to the queue with no attempt counted and waits, visibly (status, and its check
run: "Held: ..."), until the image is refreshed. A warm runner GitHub drops while idle
(docs/github.md §3.2) is a normal end.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import trio

from agent.container.docker_api import DockerAPI
from agent.container.lifecycle import Outcome, RunnerState
from agent.container.pool_manager import PoolManager
from agent.emulator.checks import CheckRun
from agent.emulator.models import parse_runner_version
from agent.queue.base import JobQueue, JobState
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import ROOT, Stack, pool_stack, wait_entry, wait_state

pytestmark = pytest.mark.docker

OFFICIAL = "gantryd/stand-in-runner-official:latest"
JOB_LABELS = ["self-hosted", "linux"]
# The official image writes /home/runner; no read-only rootfs for it here (another change).
OFFICIAL_POOL = {"read_only_rootfs": False, "memory": "256MiB"}


@pytest.fixture(scope="module")
def official_copy(docker_client: docker.DockerClient) -> Iterator[str]:
    """The official-like image under a tag of this test's own (so rebuilding it moves no tag
    anyone else uses); every image made under that tag is removed at the end."""
    subprocess.run(
        ["bash", str(ROOT / "images/official-like-runner/build.sh")],
        check=True,
        capture_output=True,
    )
    repository = f"gantryd-test/outdated-{secrets.token_hex(3)}"
    docker_client.images.get(OFFICIAL).tag(repository, "latest")
    try:
        yield f"{repository}:latest"
    finally:
        for image in docker_client.images.list(name=repository):
            for tag in image.tags:
                docker_client.images.remove(tag, noprune=False)


def parts(stack: Stack) -> tuple[PoolManager, JobQueue]:
    assert stack.daemon.pools is not None and stack.daemon.queue is not None
    return stack.daemon.pools, stack.daemon.queue


async def test_exit_7_holds_the_pool_until_its_image_changes_and_burns_no_attempt(
    tmp_path: Path, docker_client: docker.DockerClient, official_copy: str
) -> None:
    # GitHub refuses the runner made for the job before assigning it anything (the emulator
    # gives no job to a runner below its version floor), so the job stays queued throughout.
    pool = {**OFFICIAL_POOL, "image": official_copy, "pull_policy": "never"}
    async with pool_stack(tmp_path, pool=pool, queue={"retry_attempts": 1}) as stack:
        try:
            pools, queue = parts(stack)
            emulator = stack.emulator
            emulator.min_runner_version = parse_runner_version("99.0.0")
            job = emulator.create_job("octo-org/app", JOB_LABELS, "echo refreshed")
            with trio.fail_after(60):
                await pools.wait_until(lambda: "default" in pools.stats.outdated)
                await pools.wait_no_runners()
                await wait_entry(queue, job.id, JobState.QUEUED)
            assert emulator.job(job.id).status == "queued"  # never assigned to the refused one
            entry = await queue.get(job.id)
            assert entry is not None and entry.attempts == 0
            assert pools.stats.outcomes[Outcome.IMAGE_OUTDATED] == 1
            assert pools.stats.outcomes[Outcome.EXIT_BEFORE_JOB] == 0
            reason = pools.hold_reason("default")
            assert reason is not None and official_copy in reason and "exit 7" in reason
            default = stack.daemon.live.current.pool("default")
            assert default is not None and pools.free_slots(default) == 0
            assert managed_containers(docker_client, stack.setup.instance) == []
            # The job's check run says why it waits, as it says "Waiting for approval".

            def runs() -> list[CheckRun]:
                return emulator.checks.runs_of("octo-org/app", head_sha=job.head_sha)

            with trio.fail_after(30):
                await emulator.checks.wait_until(
                    lambda: any(r.output.get("title") == f"Held: {reason}" for r in runs())
                )
            (run,) = runs()
            assert run.status == "queued" and "no attempt is counted" in run.output["summary"]
            # A newer image appears under the tag (as a pull would bring): the hold ends,
            # GitHub takes its runner, the job runs once.
            emulator.min_runner_version = None
            dockerfile = f"FROM {official_copy}\nLABEL io.gantryd.test.refreshed=true\n"
            await trio.to_thread.run_sync(
                lambda: docker_client.images.build(
                    fileobj=io.BytesIO(dockerfile.encode()), tag=official_copy, rm=True
                )
            )
            with trio.fail_after(90):
                await emulator.wait_job(job.id, "completed")
            assert emulator.job(job.id).conclusion == "success"
            assert "default" not in pools.stats.outdated and pools.hold_reason("default") is None
            entry = await queue.get(job.id)
            assert entry is not None and entry.attempts == 0
            with trio.fail_after(30):
                await emulator.checks.wait_until(lambda: run.status == "completed")
            assert run.conclusion == "success" and runs() == [run]
        finally:
            remove_managed(docker_client, stack.setup.instance)


async def test_a_warm_runner_github_dropped_while_idle_is_a_normal_end_and_replaced(
    tmp_path: Path, docker_client: docker.DockerClient, official_copy: str
) -> None:
    pool = {
        **OFFICIAL_POOL,
        "image": official_copy,
        "pull_policy": "never",
        "min_idle": 1,
        "warm_repositories": ["octo-org/app"],
        "max_idle_age": "1h",  # GitHub comes first here
    }
    async with pool_stack(tmp_path, exit_settle=0.5, pool=pool) as stack:
        try:
            pools, _ = parts(stack)
            stack.emulator.runner_idle_timeout = 3.0
            with trio.fail_after(60):
                await pools.wait_until(lambda: pools.stats.outcomes[Outcome.REMOVED_BY_GITHUB] >= 1)
            first_gone = pools.stats.outcomes[Outcome.CREATED]
            with trio.fail_after(60):  # min_idle refills with a fresh one
                await pools.wait_until(
                    lambda: (
                        pools.stats.outcomes[Outcome.CREATED] > first_gone
                        and any(r.warm and r.state is RunnerState.IDLE for r in pools.runners())
                    )
                )
            assert pools.stats.outcomes[Outcome.EXIT_BEFORE_JOB] == 0
            assert pools.stats.outcomes[Outcome.PROVISION_FAILED] == 0
        finally:
            remove_managed(docker_client, stack.setup.instance)


def removed(client: docker.DockerClient, name: str) -> None:
    """Block until Docker has removed the container (or never had it)."""
    with contextlib.suppress(docker.errors.NotFound):
        client.api.wait(name, condition="removed", timeout=60)


@pytest.mark.parametrize("held", ["create", "start"])
async def test_a_job_cancelled_while_its_runner_starts_removes_the_runner_and_nothing_crashes(
    held: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    runner_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interleaving forced (found by tests/test_chaos.py: the daemon died of an illegal
    ``starting -> removed``): the job is cancelled on GitHub while its runner's container is
    being created (the runner ``creating``) or started (``starting``). The surplus runner is
    scaled down, what the provisioning makes after that is removed, and gantryd goes on."""
    method = "create" if held == "create" else "start_with_stdin"
    real = getattr(DockerAPI, method)
    entered, release, done = trio.Event(), trio.Event(), trio.Event()

    async def holding(self: DockerAPI, *args: Any) -> Any:
        if entered.is_set():
            return await real(self, *args)
        entered.set()
        await release.wait()
        try:
            return await real(self, *args)
        finally:
            done.set()  # the held call went through: the container exists from here on

    monkeypatch.setattr(DockerAPI, method, holding)
    async with pool_stack(tmp_path) as stack:
        pools, queue = parts(stack)
        emulator = stack.emulator
        try:
            job = emulator.create_job("octo-org/app", JOB_LABELS, "echo never")
            with trio.fail_after(60):
                await entered.wait()
                (runner,) = pools.runners()
                assert runner.state is (
                    RunnerState.CREATING if held == "create" else RunnerState.STARTING
                )
                emulator.cancel_job(job.id)
                await pools.wait_until(lambda: not pools.runners())  # scaled down
                release.set()
                entry = await wait_state(pools, queue, job.id, JobState.DONE)
            assert entry.conclusion == "cancelled"
            with trio.fail_after(60):  # the provisioning's leftovers go once it returns
                await done.wait()  # else, held at create, there may be nothing to wait for yet
                await trio.to_thread.run_sync(removed, docker_client, runner.name)
            assert managed_containers(docker_client, stack.setup.instance) == []
            scope = emulator.scope_for(repository="octo-org/app")
            assert [r.name for r in emulator.runners(scope)] == []
            later = emulator.create_job("octo-org/app", JOB_LABELS, "echo ok")
            with trio.fail_after(60):  # gantryd is still serving
                await emulator.wait_job(later.id, "completed")
            assert emulator.job(later.id).conclusion == "success"
        finally:
            remove_managed(docker_client, stack.setup.instance)
