"""Workflow runs and their jobs (reference §4), what gantryd's reconciler sweeps.

    GET /repos/{owner}/{repo}/actions/runs[?status=&per_page=&page=]
        -> {total_count, workflow_runs}
    GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs[?filter=&per_page=&page=]
        -> {total_count, jobs}

Both need Actions: read. A run is the set of the emulator's jobs sharing its ``run_id``; its
status is ``queued`` while every job is, ``completed`` once every job is, else ``in_progress``
(a run is in progress while some of its jobs are still queued, §4's reconciliation hint). The
``status`` filter matches a run's status or its conclusion, as on GitHub. Runs are listed newest
first.
"""

from __future__ import annotations

from typing import Any

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.models import Conclusion, Job, JobStatus, iso8601, job_json
from agent.emulator.rest import _int, _link_header, _page_args, _token
from agent.emulator.state import Emulator

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
    first = jobs[0]
    repo = first.repository.full_name
    updated = max(j.completed_at or j.started_at or j.created_at for j in jobs)
    return {
        "id": first.run_id,
        "name": first.workflow_name,
        "head_branch": first.head_branch,
        "head_sha": first.head_sha,
        "run_number": first.run_id % 100_000,
        "run_attempt": 1,
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
        found = [
            jobs
            for _, jobs in sorted(runs.items(), reverse=True)
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
        per_page, page = _page_args(request)
        shown = jobs[(page - 1) * per_page : page * per_page]
        links = _link_header(emulator.base_url, request, page, per_page, len(jobs))
        body = {
            "total_count": len(jobs),
            "jobs": [job_json(j, emulator.base_url) for j in shown],
        }
        return Response.json(200, body, links)

    return [
        route("GET", "/repos/{owner}/{repo}/actions/runs", list_runs),
        route("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", list_jobs),
    ]
