"""Organization pools and their runner group's repository policy (docs/github.md §3.5),
against the GitHub stand-in and the real Docker Engine: the repositories a group never admits
are named at start and after a reload, and their jobs end at once with the reason."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import docker
import pytest
import trio

from agent.container.lifecycle import Outcome
from agent.github.runners import GroupPolicy, refusal
from agent.queue.base import JobState
from tests.conftest import remove_managed
from tests.container.stack import pool_stack, wait_entry

pytestmark = pytest.mark.docker

JOB_LABELS = ["self-hosted", "linux"]


async def test_a_public_repository_the_default_group_never_admits_is_named_and_refused(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with pool_stack(
        tmp_path,
        pool={"scope": "organization"},
        github={"organizations": ["octo-org"]},
        public_repositories=["octo-org/web"],
    ) as stack:
        try:
            pools, queue = stack.daemon.pools, stack.daemon.queue
            assert pools is not None and queue is not None
            with trio.fail_after(30):
                await pools.wait_until(
                    lambda: "octo-org/web" in pools.unreachable.get("default", {})
                )
            assert set(pools.unreachable["default"]) == {"octo-org/web"}  # the private ones serve
            (note,) = pools.pool_notes("default")
            assert "never serves octo-org/web" in note and "allows_public_repositories" in note
            public = stack.emulator.create_job("octo-org/web", JOB_LABELS, "echo never")
            private = stack.emulator.create_job("octo-org/app", JOB_LABELS, "echo private")
            with trio.fail_after(60):
                await wait_entry(queue, public.id, JobState.CANCELLED)
                await stack.emulator.wait_job(private.id, "completed")
            entry = await queue.get(public.id)
            assert entry is not None and entry.attempts == 0
            assert "can never serve octo-org/web" in (entry.conclusion or "")
            # Its check run says why.
            with trio.fail_after(30):
                await stack.emulator.checks.wait_until(
                    lambda: any(
                        r.status == "completed"
                        and "can never serve" in str(r.output.get("summary"))
                        for r in stack.emulator.checks.runs_of("octo-org/web")
                    )
                )
            assert pools.stats.outcomes[Outcome.CREATED] == 1  # only the private job's runner
            assert stack.emulator.job(private.id).conclusion == "success"
            # An admin lets the group serve public repositories; a reload checks it again.
            stack.emulator.set_runner_group_policy("octo-org", 1, allows_public_repositories=True)
            assert stack.daemon.reload()
            with trio.fail_after(30):
                await pools.wait_until(lambda: not pools.unreachable.get("default"))
            assert pools.pool_notes("default") == ()
        finally:
            remove_managed(docker_client, stack.setup.instance)


async def test_runs_on_group_jobs_are_routed_by_their_labels_to_that_groups_pool(
    tmp_path: Path, docker_client: docker.DockerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """runs-on: {group: GPU, labels: [self-hosted, gpu]} arrives as its labels only; they lead
    to the pool whose runners register in GPU, and GitHub gives the job to that runner. A job
    naming only a group (no labels) is never taken: nothing in the payload says where."""
    async with pool_stack(
        tmp_path,
        pool={"scope": "organization", "runner_group": "ci"},
        extra_pools=[
            {
                "name": "gpu",
                "labels": ["self-hosted", "linux", "gpu"],
                "scope": "organization",
                "runner_group": "GPU",
            }
        ],
        github={"organizations": ["octo-org"]},
    ) as stack:
        try:
            pools, queue, intake = stack.daemon.pools, stack.daemon.queue, stack.daemon.intake
            assert pools is not None and queue is not None and intake is not None
            emulator = stack.emulator
            emulator.add_runner_group("octo-org", "ci")
            gpu = emulator.add_runner_group("octo-org", "GPU")
            with caplog.at_level(logging.INFO, logger="agent.orchestrator.webhook"):
                unroutable = emulator.create_job("octo-org/app", [], "echo never", group="ci")
                job = emulator.create_job(
                    "octo-org/app", ["self-hosted", "gpu"], "echo gpu", group="GPU"
                )
                with trio.fail_after(60):
                    await emulator.wait_job(job.id, "completed")
            done = emulator.job(job.id)
            assert done.conclusion == "success"
            assert (done.runner_group_id, done.runner_group_name) == (gpu.id, "GPU")
            entry = await queue.get(job.id)
            assert entry is not None and entry.spec.pool == "gpu" and entry.attempts == 0
            assert await queue.get(unroutable.id) is None
            assert emulator.job(unroutable.id).status == "queued"
            assert intake.stats.ignored["no_labels"] == 1
            assert f"job {unroutable.id} of octo-org/app not served" in caplog.text
            assert "runs-on names no labels, only a runner group" in caplog.text
            assert pools.stats.outcomes[Outcome.CREATED] == 1  # none for the unroutable job
        finally:
            remove_managed(docker_client, stack.setup.instance)


async def test_a_job_of_a_group_no_pool_serves_ends_with_the_group_named(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """runs-on: {group: elsewhere, labels: [self-hosted, linux]}: the labels fit the "ci"
    pool, so gantryd starts a runner (it cannot see the group); GitHub never gives it the job,
    and the reason on the job's check run says which group the pool's runners are in."""
    async with pool_stack(
        tmp_path,
        pool={"scope": "organization", "runner_group": "ci", "bootstrap_timeout": "2s"},
        github={"organizations": ["octo-org"]},
        queue={"retry_attempts": 0},
    ) as stack:
        try:
            queue, emulator = stack.daemon.queue, stack.emulator
            assert queue is not None
            emulator.add_runner_group("octo-org", "ci")
            emulator.add_runner_group("octo-org", "elsewhere")
            job = emulator.create_job("octo-org/app", JOB_LABELS, "echo never", group="elsewhere")
            with trio.fail_after(60):
                await wait_entry(queue, job.id, JobState.DEAD)
            assert emulator.job(job.id).status == "queued"  # no runner of its group exists
            entry = await queue.get(job.id)
            assert entry is not None and 'it must be "ci"' in (entry.last_error or "")
            with trio.fail_after(30):
                await emulator.checks.wait_until(
                    lambda: any(
                        r.status == "completed" and 'it must be "ci"' in str(r.output["summary"])
                        for r in emulator.checks.runs_of("octo-org/app")
                    )
                )
        finally:
            remove_managed(docker_client, stack.setup.instance)


async def test_a_runner_group_missing_at_github_is_named_in_status(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with pool_stack(
        tmp_path,
        pool={"scope": "organization", "runner_group": "ci"},
        github={"organizations": ["octo-org"]},
    ) as stack:
        try:
            pools = stack.daemon.pools
            assert pools is not None
            with trio.fail_after(30):
                await pools.wait_until(lambda: bool(pools.pool_notes("default")))
            (note,) = pools.pool_notes("default")
            assert note == (
                'NO GROUP: organization octo-org has no group "ci" (it has: Default): '
                "no runner of this pool can register"
            )
            stack.emulator.add_runner_group("octo-org", "ci", allows_public_repositories=True)
            assert stack.daemon.reload()  # checked again, as on every gc_interval
            with trio.fail_after(30):
                await pools.wait_until(lambda: pools.pool_notes("default") == ())
        finally:
            remove_managed(docker_client, stack.setup.instance)


def test_refusal_follows_githubs_group_policy() -> None:
    default = GroupPolicy(
        organization="acme", name="Default", visibility="all", allows_public_repositories=False
    )
    assert refusal(default, "acme/app", private=True) is None
    assert "does not allow public" in (refusal(default, "acme/lib", private=False) or "")
    public_ok = replace(default, allows_public_repositories=True)
    assert refusal(public_ok, "acme/lib", private=False) is None
    private_only = replace(public_ok, visibility="private")
    assert "private repositories" in (refusal(private_only, "acme/lib", private=False) or "")
    selected = replace(public_ok, visibility="selected", selected=frozenset({"acme/app"}))
    assert refusal(selected, "ACME/App", private=True) is None
    assert "acme/tool is not one" in (refusal(selected, "acme/tool", private=True) or "")
