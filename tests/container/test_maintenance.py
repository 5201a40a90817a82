"""The maintenance pass (agent/container/maintenance.py) against the GitHub stand-in and the
real Docker Engine: bootstrap_timeout, max_idle_age and job_timeout, each carried out and
recorded."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import trio

from agent.container.lifecycle import Outcome
from agent.queue.base import JobState
from tests.conftest import managed_containers
from tests.container.stack import wait_state
from tests.container.test_pool_manager import JOB_LABELS, idle_warm, parts, stack_of

pytestmark = pytest.mark.docker


async def test_bootstrap_timeout_recycles_a_runner_that_never_takes_its_job(
    tmp_path: Path, docker_client: docker.DockerClient, silent_image: str
) -> None:
    async with stack_of(
        tmp_path,
        docker_client,
        pool={"image": silent_image, "bootstrap_timeout": "1s", "stop_grace": "0s"},
        queue={"retry_attempts": 0},
    ) as stack:
        pools, queue = parts(stack)
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "echo never")
        with trio.fail_after(60):
            entry = await wait_state(pools, queue, job.id, JobState.DEAD)
            await pools.wait_no_runners()
        assert "bootstrap_timeout" in (entry.last_error or "")
        assert pools.stats.outcomes[Outcome.BOOTSTRAP_TIMEOUT] == 1
        assert managed_containers(docker_client, stack.setup.instance) == []
        # GitHub first: the registration was deleted too.
        assert stack.emulator.runners(stack.emulator.scope_for(repository="octo-org/app")) == []


async def test_max_idle_age_replaces_warm_runners(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    pool = {"min_idle": 1, "warm_repositories": ["octo-org/lib"], "max_idle_age": "1s"}
    async with stack_of(tmp_path, docker_client, pool=pool) as stack:
        pools, _ = parts(stack)
        with trio.fail_after(30):
            await pools.wait_until(lambda: bool(idle_warm(pools)))
        first = idle_warm(pools)[0].name
        with trio.fail_after(30):
            await pools.wait_until(lambda: any(r.name != first for r in idle_warm(pools)))
        assert pools.stats.outcomes[Outcome.IDLE_RECYCLED] >= 1
        assert first not in managed_containers(docker_client, stack.setup.instance)


async def test_job_timeout_stops_the_runner_and_is_recorded(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with stack_of(
        tmp_path, docker_client, pool={"job_timeout": "1s", "stop_grace": "2s"}
    ) as stack:
        pools, queue = parts(stack)
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "sleep 120")
        checks = stack.emulator.checks

        def reported() -> bool:
            runs = [r for r in checks.runs.values() if r.external_id == str(job.id)]
            return bool(runs) and runs[0].status == "completed"

        with trio.fail_after(60):
            await stack.emulator.wait_job(job.id, "completed")
            await pools.wait_no_runners()
            await checks.wait_until(reported)
        assert stack.emulator.job(job.id).conclusion == "failure"  # the runner reported it
        assert pools.stats.outcomes[Outcome.JOB_TIMEOUT] == 1
        usage = await pools.usage(job.id)
        assert usage is not None and "timed_out" in (usage.reason or "")
        # Issue 13 §4: recorded and reported as timed out, not left `running` (nor "failure")
        entry = await queue.get(job.id)
        assert entry is not None and entry.state is JobState.DONE
        assert entry.conclusion == "timed_out"
        (run,) = [r for r in checks.runs.values() if r.external_id == str(job.id)]
        assert run.conclusion == "timed_out" and "job_timeout (1s)" in run.output["summary"]
