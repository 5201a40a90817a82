"""Jobs behind an environment with required reviewers (agent/emulator/state.py `review_job`).

The sequence and the payload shapes are GitHub's, from octokit/webhooks
payload-examples/api.github.com/workflow_job/queued.with-deployment.payload.json and
waiting.payload.json (one job, id 12877621891, in both).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent.emulator import Conclusion, Emulator, JobStatus
from agent.emulator.errors import GitHubError
from agent.emulator.models import Runner, RunnerScope
from agent.emulator.state import APPROVAL_TIMEOUT

from .conftest import Clock, sent

LABELS = ["self-hosted", "gantryd"]
# Keys of octokit's examples, in their order (their repository is a user's: no "organization").
EXAMPLE_KEYS = ["action", "workflow_job", "deployment", "repository", "sender", "installation"]
WAITING_KEYS = ["action", "workflow_job", "repository", "sender", "installation"]
EXAMPLE_JOB_KEYS = [
    "id", "run_id", "workflow_name", "head_branch", "run_url", "run_attempt", "node_id",
    "head_sha", "url", "html_url", "status", "conclusion", "created_at", "started_at",
    "completed_at", "name", "steps", "check_run_url", "labels", "runner_id", "runner_name",
    "runner_group_id", "runner_group_name",
]  # fmt: skip
EXAMPLE_DEPLOYMENT_KEYS = [
    "url", "id", "node_id", "task", "original_environment", "environment", "description",
    "created_at", "updated_at", "statuses_url", "repository_url", "creator", "sha", "ref",
    "payload", "transient_environment", "production_environment", "performed_via_github_app",
]  # fmt: skip


def connected_runner(emulator: Emulator) -> Runner:
    runner, _ = emulator.generate_jitconfig(
        RunnerScope(repository="acme/app"), {"name": "r", "runner_group_id": 1, "labels": LABELS}
    )
    emulator.open_session(runner.secret)
    return runner


def events(emulator: Emulator) -> list[dict[str, Any]]:
    """The workflow_job payloads queued so far for the App's hook (added by the caller)."""
    (hook,) = emulator._hooks
    return [json.loads(o.body) for o in sent(hook) if o.event == "workflow_job"]


def test_required_reviewers_hold_the_job_until_approved(emulator: Emulator) -> None:
    emulator.add_environment("acme/app", "production", required_reviewers=True)
    emulator.add_hook("http://127.0.0.1:9/hook", "secret")
    runner = connected_runner(emulator)
    job = emulator.create_job("acme/app", LABELS, "true", environment="production")

    assert job.status is JobStatus.WAITING
    assert runner.job_id is None  # a matching runner is online, and still gets nothing
    queued, waiting = events(emulator)
    assert [key for key in queued if key != "organization"] == EXAMPLE_KEYS
    assert (queued["action"], queued["workflow_job"]["status"]) == ("queued", "waiting")
    assert list(queued["workflow_job"]) == EXAMPLE_JOB_KEYS
    assert queued["workflow_job"]["runner_id"] is None
    deployment = queued["deployment"]
    assert list(deployment) == EXAMPLE_DEPLOYMENT_KEYS
    assert (deployment["environment"], deployment["original_environment"]) == (
        "production",
        "production",
    )
    assert (deployment["sha"], deployment["ref"]) == (job.head_sha, "main")
    assert deployment["task"] == "deploy"
    assert deployment["performed_via_github_app"]["slug"] == "github-actions"
    assert [key for key in waiting if key != "organization"] == WAITING_KEYS
    assert (waiting["action"], waiting["workflow_job"]["status"]) == ("waiting", "waiting")

    emulator.review_job(job.id, approve=True)
    again, started = events(emulator)
    assert (again["action"], again["workflow_job"]["status"]) == ("queued", "queued")
    assert again["workflow_job"]["id"] == job.id
    assert again["deployment"]["id"] == deployment["id"]
    assert started["action"] == "in_progress"
    assert started["workflow_job"]["runner_name"] == "r"
    assert runner.job_id == job.id
    with pytest.raises(GitHubError) as caught:
        emulator.review_job(job.id, approve=True)
    assert caught.value.status == 422


def test_approved_job_waits_for_a_runner_like_any_other(emulator: Emulator) -> None:
    emulator.add_environment("acme/app", "production", required_reviewers=True)
    job = emulator.create_job("acme/app", LABELS, "true", environment="production")
    emulator.review_job(job.id, approve=True)
    assert job.status is JobStatus.QUEUED
    runner = connected_runner(emulator)
    assert runner.job_id == job.id


def test_rejected_job_fails_without_a_runner(emulator: Emulator) -> None:
    emulator.add_environment("acme/app", "production", required_reviewers=True)
    emulator.add_hook("http://127.0.0.1:9/hook", "secret")
    runner = connected_runner(emulator)
    job = emulator.create_job("acme/app", LABELS, "true", environment="production")
    events(emulator)
    emulator.review_job(job.id, approve=False)
    (completed,) = events(emulator)
    assert completed["action"] == "completed"
    assert (completed["workflow_job"]["status"], completed["workflow_job"]["conclusion"]) == (
        "completed",
        "failure",
    )
    assert completed["workflow_job"]["runner_id"] is None
    assert (job.conclusion, runner.job_id) == (Conclusion.FAILURE, None)


def test_environment_without_reviewers_queues_at_once_with_its_deployment(
    emulator: Emulator,
) -> None:
    emulator.add_hook("http://127.0.0.1:9/hook", "secret")
    job = emulator.create_job("acme/app", LABELS, "true", environment="staging")
    (queued,) = events(emulator)
    assert (queued["action"], queued["workflow_job"]["status"]) == ("queued", "queued")
    assert queued["deployment"]["environment"] == "staging"
    assert job.status is JobStatus.QUEUED
    plain = emulator.create_job("acme/app", LABELS, "true")
    (queued,) = events(emulator)
    assert "deployment" not in queued and plain.deployment is None


def test_waiting_job_can_be_cancelled(emulator: Emulator) -> None:
    emulator.add_environment("acme/app", "production", required_reviewers=True)
    job = emulator.create_job("acme/app", LABELS, "true", environment="production")
    emulator.cancel_job(job.id)
    assert (job.status, job.conclusion) == (JobStatus.COMPLETED, Conclusion.CANCELLED)


def test_unreviewed_job_fails_after_30_days(emulator: Emulator, clock: Clock) -> None:
    emulator.add_environment("acme/app", "production", required_reviewers=True)
    job = emulator.create_job("acme/app", LABELS, "true", environment="production")
    clock.now += APPROVAL_TIMEOUT - 1
    emulator.reap()
    assert job.status is JobStatus.WAITING
    clock.now += 1
    emulator.reap()
    assert (job.status, job.conclusion) == (JobStatus.COMPLETED, Conclusion.FAILURE)


async def test_review_over_the_control_api_and_what_rest_shows(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    made = await http.post(
        "/_emulator/environments",
        json={"repository": "acme/app", "name": "production", "required_reviewers": True},
    )
    assert made.status_code == 201
    created = await http.post(
        "/_emulator/jobs",
        json={
            "repository": "acme/app",
            "labels": LABELS,
            "script": "true",
            "environment": "production",
        },
    )
    job = created.json()
    assert job["status"] == "waiting"
    headers = {"Authorization": f"Bearer {token_for(11)}"}
    rest = await http.get(f"/repos/acme/app/actions/jobs/{job['id']}", headers=headers)
    assert rest.json()["status"] == "waiting"
    runs = await http.get("/repos/acme/app/actions/runs", headers=headers)
    assert runs.json()["workflow_runs"][0]["status"] == "waiting"
    waiting = await http.get("/repos/acme/app/actions/runs?status=waiting", headers=headers)
    assert waiting.json()["total_count"] == 1
    bad = await http.post(f"/_emulator/jobs/{job['id']}/review", json={"state": "maybe"})
    assert bad.status_code == 422
    approved = await http.post(f"/_emulator/jobs/{job['id']}/review", json={"state": "approved"})
    assert (approved.status_code, approved.json()["status"]) == (200, "queued")
    assert approved.json()["id"] == job["id"]
