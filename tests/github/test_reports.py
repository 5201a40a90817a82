"""Report texts and GitHub's limits on them (agent/github/reports.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.config import PoolConfig
from agent.github.reports import (
    MAX_CONTEXT,
    MAX_DESCRIPTION,
    MAX_OUTPUT,
    Context,
    build_report,
    check_run_name,
    status_context,
    wanted,
)
from agent.queue.base import JobSpec, JobState, OutboxEntry

SPEC = JobSpec(
    job_id=5,
    run_id=6,
    run_attempt=1,
    repository="acme/app",
    installation_id=None,
    labels=("self-hosted",),
    pool="default",
    name="test",
    head_sha="a" * 40,
)
CTX = Context(
    instance="build-1",
    pool=PoolConfig(name="default", labels=("self-hosted",)),
    position=None,
    enqueued_at=None,
    started_at=None,
    finished_at=None,
    now=1_000_000.0,
)


def entry(state: JobState, **detail: Any) -> OutboxEntry:
    return OutboxEntry(job_id=5, seq=1, state=state, spec=SPEC, detail=detail)


@pytest.mark.parametrize(
    ("state", "detail", "status_state"),
    [
        (JobState.QUEUED, {}, "pending"),
        (JobState.RUNNING, {"runner_name": "r"}, "pending"),
        (JobState.DONE, {"conclusion": "success"}, "success"),
        (JobState.DONE, {"conclusion": "failure"}, "failure"),
        (JobState.DONE, {"conclusion": "timed_out"}, "failure"),
        (JobState.DEAD, {"reason": "image pull failed"}, "error"),
        (JobState.CANCELLED, {"reason": "operator"}, "error"),
    ],
)
def test_status_states(state: JobState, detail: dict[str, Any], status_state: str) -> None:
    body = build_report(entry(state, **detail), CTX).status_body(entry(state, **detail))
    assert body["state"] == status_state and body["context"] == "gantryd: test (attempt 1, job 5)"
    assert len(body["description"]) <= MAX_DESCRIPTION


def test_each_job_and_attempt_has_a_status_context_of_its_own() -> None:
    """GitHub keeps one status per commit and context: jobs sharing one would overwrite."""
    named = replace(SPEC, workflow_name="CI", name="build")
    contexts = {
        status_context(OutboxEntry(job_id=s.job_id, seq=1, state=JobState.QUEUED, spec=s))
        for s in (
            named,
            replace(named, name="lint", job_id=7),  # another job of the run
            replace(named, job_id=8),  # the same job of another run (push and pull_request)
            replace(named, job_id=9, run_attempt=2),  # its re-run
        )
    }
    assert len(contexts) == 4
    assert "gantryd: CI / build (attempt 1, job 5)" in contexts
    long = replace(named, name="n" * 1000, job_id=2**62)
    cut = status_context(OutboxEntry(job_id=long.job_id, seq=1, state=JobState.QUEUED, spec=long))
    assert len(cut) == MAX_CONTEXT and cut.endswith(f"(attempt 1, job {2**62})")


def test_long_reasons_stay_within_githubs_limits() -> None:
    reason = "x" * 100_000
    dead = entry(JobState.DEAD, reason=reason)
    report = build_report(dead, CTX)
    body = report.check_run_body(dead, CTX)
    assert body["conclusion"] == "failure" and body["status"] == "completed"
    assert len(body["output"]["summary"]) == MAX_OUTPUT
    assert len(body["output"]["title"]) <= 255
    assert len(report.status_body(dead)["description"]) == MAX_DESCRIPTION


def test_unknown_conclusion_becomes_neutral() -> None:
    done = entry(JobState.DONE, conclusion="stale")
    assert build_report(done, CTX).conclusion == "neutral"


def test_reporting_modes() -> None:
    assert wanted("all", JobState.QUEUED) and wanted("all", JobState.DEAD)
    assert wanted("failures", JobState.DEAD) and not wanted("failures", JobState.DONE)
    assert not wanted("off", JobState.DEAD)


def test_check_run_names_tell_workflows_and_attempts_apart() -> None:
    names = {
        check_run_name(OutboxEntry(job_id=n, seq=1, state=JobState.QUEUED, spec=spec, detail={}))
        for n, spec in enumerate(
            [
                replace(SPEC, workflow_name="CI"),
                replace(SPEC, workflow_name="Release"),
                replace(SPEC, workflow_name="CI", run_attempt=2),
            ]
        )
    }
    assert names == {
        "gantryd: CI / test (attempt 1)",
        "gantryd: Release / test (attempt 1)",
        "gantryd: CI / test (attempt 2)",
    }


def test_a_held_job_is_reported_waiting_for_approval() -> None:
    report = build_report(entry(JobState.HELD), CTX)
    assert (report.status, report.title) == ("queued", "Waiting for approval")
    assert "approved" in report.summary
