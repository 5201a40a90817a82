"""Workflow runs and their jobs (docs/github.md §4), what gantryd's reconciler sweeps, and re-runs.

    GET  /repos/{owner}/{repo}/actions/runs[?status=&per_page=&page=]
         -> {total_count, workflow_runs}
    GET  /repos/{owner}/{repo}/actions/runs/{run_id}/jobs[?filter=&per_page=&page=]
         -> {total_count, jobs}
    GET  /repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt_number}/jobs
    POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun             -> 201
    POST /repos/{owner}/{repo}/actions/runs/{run_id}/rerun             -> 201
    POST /repos/{owner}/{repo}/actions/runs/{run_id}/rerun-failed-jobs -> 201

Reads need Actions: read, re-runs Actions: write. A run is the set of the emulator's jobs
sharing its ``run_id``; each re-run adds an attempt (``run_attempt``, new job ids) and the run
shows its latest attempt of every job (``filter=latest``; ``all`` lists every attempt). Its status
is ``waiting`` while a job waits for approval and none runs, ``queued`` while every job is,
``completed`` once every job is, else ``in_progress`` (a run is in progress while some of its
jobs are still queued, §4's reconciliation hint). The ``status`` filter matches a run's status or
its conclusion, as on GitHub. Runs are listed newest first.
"""

from __future__ import annotations

from typing import Any

from agent.emulator import errors
from agent.emulator.asgi import Handler, Request, Response, Route, route
from agent.emulator.models import Conclusion, Job, JobStatus, iso8601, job_json
from agent.emulator.rest import _int, _link_header, _page_args, _token
from agent.emulator.state import RERUN_JOB_DOCS, RERUN_RUN_DOCS, Emulator

_DOCS = "https://docs.github.com/rest/actions"
RUN_STATUSES = frozenset(
    {
        "completed",
        "action_required",
        "cancelled",
        "failure",
        "neutral",
        "skipped",
        "stale",
        "success",
        "timed_out",
        "in_progress",
        "queued",
        "requested",
        "waiting",
        "pending",
    }
)


def _status(jobs: list[Job]) -> str:
    statuses = {j.status for j in jobs}
    if JobStatus.WAITING in statuses and JobStatus.IN_PROGRESS not in statuses:
        return "waiting"
    if all(j.status is JobStatus.QUEUED for j in jobs):
        return "queued"
    if all(j.status is JobStatus.COMPLETED for j in jobs):
        return "completed"
    return "in_progress"


def _conclusion(jobs: list[Job]) -> str | None:
    if _status(jobs) != "completed":
        return None
    found = {j.conclusion for j in jobs}
    for worst in (Conclusion.FAILURE, Conclusion.CANCELLED):
        if worst in found:
            return worst.value
    return Conclusion.SUCCESS.value


def run_json(jobs: list[Job], api_url: str) -> dict[str, Any]:
    """A run from the latest attempt of each of its jobs."""
    first = jobs[0]
    repo = first.repository.full_name
    updated = max(j.completed_at or j.started_at or j.created_at for j in jobs)
    return {
        "id": first.run_id,
        "name": first.workflow_name,
        "head_branch": first.head_branch,
        "head_sha": first.head_sha,
        "run_number": first.run_id % 100_000,
        "run_attempt": max(j.run_attempt for j in jobs),
        "event": "push",
        "status": _status(jobs),
        "conclusion": _conclusion(jobs),
        "workflow_id": 161335,
        "url": f"{api_url}/repos/{repo}/actions/runs/{first.run_id}",
        "jobs_url": f"{api_url}/repos/{repo}/actions/runs/{first.run_id}/jobs",
        "cancel_url": f"{api_url}/repos/{repo}/actions/runs/{first.run_id}/cancel",
        "created_at": iso8601(first.created_at),
        "updated_at": iso8601(updated),
        "run_started_at": iso8601(first.created_at),
    }


def build_routes(emulator: Emulator) -> list[Route]:
    def runs_of(request: Request, full: str, docs: str) -> dict[int, list[Job]]:
        emulator.authorize(
            _token(request), permission=("actions", "read"), repository=full, docs=docs
        )
        emulator.maybe_fail()
        runs: dict[int, list[Job]] = {}
        for job in emulator.jobs_of(full):
            runs.setdefault(job.run_id, []).append(job)
        return runs

    async def list_runs(request: Request, owner: str, repo: str) -> Response:
        docs = f"{_DOCS}/workflow-runs#list-workflow-runs-for-a-repository"
        runs = runs_of(request, f"{owner}/{repo}", docs)
        wanted = request.query_value("status")
        if wanted is not None and wanted not in RUN_STATUSES:
            raise errors.invalid_request(
                f"For 'status', {wanted!r} is not a member of {sorted(RUN_STATUSES)}.", docs
            )
        latest = [emulator.latest_jobs(jobs) for _, jobs in sorted(runs.items(), reverse=True)]
        found = [
            jobs
            for jobs in latest
            if wanted is None or wanted in (_status(jobs), _conclusion(jobs))
        ]
        per_page, page = _page_args(request)
        shown = found[(page - 1) * per_page : page * per_page]
        links = _link_header(emulator.base_url, request, page, per_page, len(found))
        body = {
            "total_count": len(found),
            "workflow_runs": [run_json(jobs, emulator.base_url) for jobs in shown],
        }
        return Response.json(200, body, links)

    def jobs_page(request: Request, jobs: list[Job]) -> Response:
        per_page, page = _page_args(request)
        shown = jobs[(page - 1) * per_page : page * per_page]
        links = _link_header(emulator.base_url, request, page, per_page, len(jobs))
        body = {
            "total_count": len(jobs),
            "jobs": [job_json(j, emulator.base_url) for j in shown],
        }
        return Response.json(200, body, links)

    async def list_jobs(request: Request, owner: str, repo: str, run_id: str) -> Response:
        docs = f"{_DOCS}/workflow-jobs#list-jobs-for-a-workflow-run"
        runs = runs_of(request, f"{owner}/{repo}", docs)
        jobs = runs.get(_int(run_id, docs))
        if jobs is None:
            raise errors.not_found(docs)
        mode = request.query_value("filter") or "latest"
        if mode not in ("latest", "all"):
            raise errors.invalid_request(
                f"For 'filter', {mode!r} is not a member of ['latest', 'all'].", docs
            )
        return jobs_page(request, emulator.latest_jobs(jobs) if mode == "latest" else jobs)

    async def attempt_jobs(
        request: Request, owner: str, repo: str, run_id: str, attempt_number: str
    ) -> Response:
        docs = f"{_DOCS}/workflow-jobs#list-jobs-for-a-workflow-run-attempt"
        runs = runs_of(request, f"{owner}/{repo}", docs)
        jobs = runs.get(_int(run_id, docs))
        attempt = _int(attempt_number, docs)
        chosen = [j for j in jobs or () if j.run_attempt == attempt]
        if not chosen:
            raise errors.not_found(docs)
        return jobs_page(request, chosen)

    def writable(request: Request, full: str, docs: str) -> None:
        emulator.authorize(
            _token(request), permission=("actions", "write"), repository=full, docs=docs
        )
        emulator.maybe_fail()
        body = request.json(docs)
        if body is not None and not isinstance(body, dict):
            raise errors.invalid_request(f"{body!r} is not an object.", docs)

    async def rerun_job(request: Request, owner: str, repo: str, job_id: str) -> Response:
        full = f"{owner}/{repo}"
        writable(request, full, RERUN_JOB_DOCS)
        emulator.job(_int(job_id, RERUN_JOB_DOCS), repository=full, docs=RERUN_JOB_DOCS)
        emulator.rerun_job(int(job_id))
        return Response.json(201, {})

    def rerun_run(failed_only: bool, docs: str) -> Handler:
        async def handler(request: Request, owner: str, repo: str, run_id: str) -> Response:
            full = f"{owner}/{repo}"
            writable(request, full, docs)
            emulator.rerun_run(full, _int(run_id, docs), failed_only=failed_only)
            return Response.json(201, {})

        return handler

    base = "/repos/{owner}/{repo}/actions"
    return [
        route("GET", f"{base}/runs", list_runs),
        route("GET", f"{base}/runs/{{run_id}}/jobs", list_jobs),
        route("GET", f"{base}/runs/{{run_id}}/attempts/{{attempt_number}}/jobs", attempt_jobs),
        route("POST", f"{base}/jobs/{{job_id}}/rerun", rerun_job),
        route("POST", f"{base}/runs/{{run_id}}/rerun", rerun_run(False, RERUN_RUN_DOCS)),
        route(
            "POST",
            f"{base}/runs/{{run_id}}/rerun-failed-jobs",
            rerun_run(True, f"{_DOCS}/workflow-runs#re-run-failed-jobs-from-a-workflow-run"),
        ),
    ]
