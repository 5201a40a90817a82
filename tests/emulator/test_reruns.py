"""Re-runs of jobs and runs (agent/emulator/state.py `rerun_job`, `rerun_run`; runs.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent.emulator import Conclusion, Emulator, JobStatus
from agent.emulator.errors import GitHubError
from agent.emulator.models import Job, RunnerScope

from .conftest import sent

LABELS = ["self-hosted", "gantryd"]


def run_to_end(emulator: Emulator, job: Job, exit_code: int = 0) -> None:
    runner, _ = emulator.generate_jitconfig(
        RunnerScope(repository="acme/app"),
        {"name": f"r-{job.id}", "runner_group_id": 1, "labels": LABELS},
    )
    emulator.open_session(runner.secret)
    assert runner.job_id == job.id
    emulator.report_result(runner.secret, job.id, exit_code, b"")


def test_rerun_job_is_a_new_job_of_the_next_attempt(emulator: Emulator) -> None:
    hook = emulator.add_hook("http://127.0.0.1:9/hook", "secret")
    job = emulator.create_job("acme/app", LABELS, "exit 1", name="test")
    run_to_end(emulator, job, exit_code=1)
    first = sent(hook)
    again = emulator.rerun_job(job.id)
    assert again.id != job.id
    assert (again.run_id, again.run_attempt, again.status) == (job.run_id, 2, JobStatus.QUEUED)
    assert (again.name, again.labels, again.head_sha) == (job.name, job.labels, job.head_sha)
    (queued,) = sent(hook)
    payload = json.loads(queued.body)
    assert payload["action"] == "queued"
    assert (payload["workflow_job"]["id"], payload["workflow_job"]["run_attempt"]) == (again.id, 2)
    assert queued.guid not in {o.guid for o in first}
    run_to_end(emulator, again)
    third = emulator.rerun_job(again.id)
    assert third.run_attempt == 3


def test_rerun_refused_while_the_run_is_running(emulator: Emulator) -> None:
    job = emulator.create_job("acme/app", LABELS, "true")
    with pytest.raises(GitHubError) as caught:
        emulator.rerun_job(job.id)
    assert (caught.value.status, caught.value.message) == (
        403,
        "The workflow run containing this job is already running",
    )
    with pytest.raises(GitHubError) as caught:
        emulator.rerun_run("acme/app", job.run_id)
    assert caught.value.status == 403


def test_rerun_failed_jobs_of_a_run(emulator: Emulator) -> None:
    build = emulator.create_job("acme/app", LABELS, "true", name="build")
    test = emulator.create_job("acme/app", LABELS, "exit 1", name="test", run_id=build.run_id)
    run_to_end(emulator, build)
    run_to_end(emulator, test, exit_code=1)
    (again,) = emulator.rerun_run("acme/app", build.run_id, failed_only=True)
    assert (again.name, again.run_attempt) == ("test", 2)
    run_to_end(emulator, again)
    everything = emulator.rerun_run("acme/app", build.run_id)
    assert sorted(j.name for j in everything) == ["build", "test"]
    assert {j.run_attempt for j in everything} == {3}


def test_rerun_of_a_job_behind_reviewers_waits_again(emulator: Emulator) -> None:
    emulator.add_environment("acme/app", "production", required_reviewers=True)
    job = emulator.create_job("acme/app", LABELS, "true", environment="production")
    emulator.review_job(job.id, approve=True)
    run_to_end(emulator, job)
    again = emulator.rerun_job(job.id)
    assert again.status is JobStatus.WAITING
    assert again.deployment is not None and job.deployment is not None
    assert again.deployment.id != job.deployment.id


async def test_rerun_endpoints_and_what_runs_show(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    # gantryd's App reads Actions only (state.DEFAULT_PERMISSIONS); a re-run needs write.
    writer = emulator.add_personal_token(11, {"actions": "write", "metadata": "read"})
    headers = {"Authorization": f"Bearer {writer}"}
    base = "/repos/acme/app/actions"
    job = emulator.create_job("acme/app", LABELS, "exit 1", name="test")
    early = await http.post(f"{base}/jobs/{job.id}/rerun", headers=headers)
    assert early.status_code == 403
    assert early.json()["message"] == "The workflow run containing this job is already running"
    run_to_end(emulator, job, exit_code=1)
    assert (await http.post(f"{base}/jobs/{job.id}/rerun", headers=headers)).status_code == 201
    (again,) = [j for j in emulator.jobs_of_run(job.run_id) if j.run_attempt == 2]

    def ids(body: dict[str, Any]) -> list[int]:
        return [j["id"] for j in body["jobs"]]

    latest = await http.get(f"{base}/runs/{job.run_id}/jobs", headers=headers)
    assert ids(latest.json()) == [again.id]
    every = await http.get(f"{base}/runs/{job.run_id}/jobs?filter=all", headers=headers)
    assert ids(every.json()) == [job.id, again.id]
    first = await http.get(f"{base}/runs/{job.run_id}/attempts/1/jobs", headers=headers)
    assert ids(first.json()) == [job.id]
    missing = await http.get(f"{base}/runs/{job.run_id}/attempts/3/jobs", headers=headers)
    assert missing.status_code == 404
    run = (await http.get(f"{base}/runs", headers=headers)).json()["workflow_runs"][0]
    assert (run["run_attempt"], run["status"]) == (2, "queued")
    run_to_end(emulator, again)
    run = (await http.get(f"{base}/runs", headers=headers)).json()["workflow_runs"][0]
    assert (run["status"], run["conclusion"]) == ("completed", "success")
    whole = await http.post(f"{base}/runs/{job.run_id}/rerun", headers=headers)
    assert whole.status_code == 201
    assert max(j.run_attempt for j in emulator.jobs_of_run(job.run_id)) == 3
    nothing_failed = await http.post(f"{base}/runs/{job.run_id}/rerun-failed-jobs", headers=headers)
    assert nothing_failed.status_code == 403  # attempt 3 is still running
    read_only = {"Authorization": f"Bearer {token_for(11)}"}
    refused = await http.post(f"{base}/jobs/{job.id}/rerun", headers=read_only)
    assert refused.status_code == 403
    assert refused.headers["x-accepted-github-permissions"] == "actions=write"


async def test_control_api_reruns(http: httpx.AsyncClient, emulator: Emulator) -> None:
    job = emulator.create_job("acme/app", LABELS, "true")
    emulator.cancel_job(job.id)
    again = await http.post(f"/_emulator/jobs/{job.id}/rerun")
    assert again.status_code == 201
    assert (again.json()["run_attempt"], again.json()["status"]) == (2, "queued")
    emulator.cancel_job(again.json()["id"])
    whole = await http.post(f"/_emulator/runs/{job.run_id}/rerun", json={"failed_only": True})
    assert [j["run_attempt"] for j in whole.json()] == [3]
    assert emulator.job(job.id).conclusion is Conclusion.CANCELLED
