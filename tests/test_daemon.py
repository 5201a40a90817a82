"""End to end: signed webhooks from the GitHub stand-in become jobs run in real containers."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import docker
import httpx
import pytest
import trio

from agent.demo import Stack, demo_stack
from agent.emulator.state import Emulator
from agent.ops import protocol
from agent.ops.admin_client import AdminClient
from agent.ops.protocol import Answer, Request
from agent.queue.base import JobState
from tests.conftest import managed_containers, remove_managed

pytestmark = pytest.mark.docker
A = TypeVar("A", bound=Answer)


@pytest.fixture
async def stack(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> AsyncIterator[Stack]:
    async with demo_stack(tmp_path) as running:
        try:
            yield running
        finally:
            remove_managed(docker_client, running.instance)


async def wait_delivered(emulator: Emulator, job_id: int, action: str) -> None:
    """Wait until gantryd answered 2xx to the job's ``action`` delivery (it is committed)."""
    seen = 0
    while True:
        deliveries = await emulator.wait_deliveries(seen + 1)
        if any(
            d.outgoing.job_id == job_id and d.outgoing.action == action and d.status == "OK"
            for d in deliveries
        ):
            return
        seen = sum(d.status != "pending" for d in deliveries)


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_jobs_from_two_repositories_run_and_leave_nothing_behind(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    emulator = stack.emulator
    jobs = [
        emulator.create_job(repo, ["self-hosted", "linux"], f"echo job {i} in {repo}")
        for i, repo in enumerate(["octo-org/app", "octo-org/lib"] * 2 + ["octo-org/app"])
    ]
    with trio.fail_after(120):
        for job in jobs:
            await emulator.wait_job(job.id, "completed")
    assert [emulator.job(j.id).conclusion for j in jobs] == ["success"] * 5
    # Every job ran on one of gantryd's runners, made for its own repository.
    assert all((emulator.job(j.id).runner_name or "").startswith("gantryd-") for j in jobs)
    assert stack.daemon.pools is not None and stack.daemon.queue is not None
    with trio.fail_after(30):
        await stack.daemon.pools.wait_no_runners()
    assert managed_containers(docker_client, stack.instance) == []
    for job in jobs:
        entry = await stack.daemon.queue.get(job.id)
        assert entry is not None and entry.state is JobState.DONE


async def test_failing_script_ends_in_failure_and_is_recorded_done(stack: Stack) -> None:
    job = stack.emulator.create_job("octo-org/app", ["self-hosted"], "echo boom >&2; exit 1")
    with trio.fail_after(60):
        await stack.emulator.wait_job(job.id, "completed")
    assert stack.emulator.job(job.id).conclusion == "failure"
    assert stack.daemon.queue is not None
    with trio.fail_after(10):
        await wait_delivered(stack.emulator, job.id, "completed")
    entry = await stack.daemon.queue.get(job.id)
    assert entry is not None and entry.state is JobState.DONE
    assert entry.conclusion == "failure"


def _payload(job_id: int, labels: list[str]) -> dict[str, object]:
    return {
        "action": "queued",
        "workflow_job": {
            "id": job_id,
            "run_id": 1,
            "run_attempt": 1,
            "name": "t",
            "workflow_name": "CI",
            "head_sha": "0" * 40,
            "head_branch": "main",
            "html_url": "https://example.invalid/x",
            "labels": labels,
            "status": "queued",
            "conclusion": None,
            "runner_name": None,
        },
        "repository": {"full_name": "octo-org/app"},
        "sender": {"login": "octocat"},
    }


async def _post(
    stack: Stack, body: bytes, *, signature: str | None, event: str = "workflow_job"
) -> httpx.Response:
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": f"d-{hash(body)}",
        "Content-Type": "application/json",
    }
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with httpx.AsyncClient() as client:
        return await client.post(stack.intake_url + "/webhook", content=body, headers=headers)


async def test_intake_rejects_bad_signatures_malformed_bodies_and_ignores_hosted_jobs(
    stack: Stack,
) -> None:
    assert stack.daemon.queue is not None
    body = json.dumps(_payload(77, ["self-hosted", "linux"])).encode()
    missing = await _post(stack, body, signature=None)
    wrong = await _post(stack, body, signature=_sign("not-the-secret", body))
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "X-Hub-Signature-256" in wrong.text
    assert await stack.daemon.queue.get(77) is None

    hosted = json.dumps(_payload(78, ["ubuntu-latest"])).encode()
    answer = await _post(stack, hosted, signature=_sign(stack.webhook_secret, hosted))
    assert answer.status_code == 200 and "ignored" in answer.text
    assert await stack.daemon.queue.get(78) is None

    broken = b'{"action": "queued", '
    answer = await _post(stack, broken, signature=_sign(stack.webhook_secret, broken))
    assert answer.status_code == 400 and "malformed" in answer.text

    no_id = _payload(79, ["self-hosted"])
    del no_id["workflow_job"]["id"]  # type: ignore[attr-defined]
    raw = json.dumps(no_id).encode()
    answer = await _post(stack, raw, signature=_sign(stack.webhook_secret, raw))
    assert answer.status_code == 400 and "workflow_job.id" in answer.text

    signed = await _post(stack, body, signature=_sign(stack.webhook_secret, body))
    assert signed.status_code == 201
    entry = await stack.daemon.queue.get(77)
    assert entry is not None and entry.spec.pool == "default"


async def test_drain_survives_a_restart_and_nothing_is_claimed_until_resume(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    def admin(request: Request[A]) -> A:
        return AdminClient(tmp_path / "run" / "admin.sock").call(request)

    async with demo_stack(tmp_path) as first:
        try:
            await trio.to_thread.run_sync(admin, protocol.drain())
        finally:
            remove_managed(docker_client, first.instance)
    drained = tmp_path / "drained"
    assert drained.exists() and drained.stat().st_mode & 0o777 == 0o600
    async with demo_stack(tmp_path) as again:  # the restart: a new process would read the same
        try:
            daemon = again.daemon
            assert daemon.scheduler is not None and daemon.scheduler.paused
            assert daemon.queue is not None
            job = again.emulator.create_job("octo-org/app", ["self-hosted", "linux"], "true")
            with trio.fail_after(30):
                await wait_delivered(again.emulator, job.id, "queued")
            entry = await daemon.queue.get(job.id)
            assert entry is not None and entry.state is JobState.QUEUED
            await trio.to_thread.run_sync(admin, protocol.resume())
            assert not drained.exists()
            with trio.fail_after(120):
                await again.emulator.wait_job(job.id, "completed")
        finally:
            remove_managed(docker_client, again.instance)
