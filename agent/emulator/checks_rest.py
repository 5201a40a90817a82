"""The routes of what a reporter writes: check runs, commit statuses, run cancellation.

Records and validation live in `agent.emulator.checks` (docs/github.md §6.1, §6.2); this module adds
authentication and the permission each route needs (§5.3: checks, statuses, actions), and the
5xx faults every REST route passes through.
"""

from __future__ import annotations

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.checks import check_run_json, combined_state, status_json
from agent.emulator.errors import GitHubError
from agent.emulator.models import JobStatus
from agent.emulator.rest import _int, _page_args, _token
from agent.emulator.state import PERSONAL_TOKEN_PREFIXES, Emulator

_DOCS = "https://docs.github.com/rest"
_CHECKS = f"{_DOCS}/checks/runs"
_STATUSES = f"{_DOCS}/commits/statuses#create-a-commit-status"
_CANCEL = f"{_DOCS}/actions/workflow-runs#cancel-a-workflow-run"


def build_routes(emulator: Emulator) -> list[Route]:
    """Routes over ``emulator.checks``, with the permissions §5.3 names for each."""
    checks = emulator.checks

    def authorize(request: Request, repository: str, permission: tuple[str, str], docs: str) -> str:
        emulator.maybe_fail()
        token = _token(request)
        if permission[0] == "checks" and token.startswith(PERSONAL_TOKEN_PREFIXES):
            raise GitHubError(
                403, "You must authenticate via a GitHub App.", documentation_url=docs
            )
        emulator.authorize(token, permission=permission, repository=repository, docs=docs)
        return emulator.scope_for(repository=repository).repository or repository

    async def create(request: Request, owner: str, repo: str) -> Response:
        docs = f"{_CHECKS}#create-a-check-run"
        full = authorize(request, f"{owner}/{repo}", ("checks", "write"), docs)
        run = checks.create_run(full, request.json(docs), docs)
        return Response.json(201, check_run_json(run, emulator.base_url))

    async def update(request: Request, owner: str, repo: str, check_run_id: str) -> Response:
        docs = f"{_CHECKS}#update-a-check-run"
        full = authorize(request, f"{owner}/{repo}", ("checks", "write"), docs)
        run = checks.update_run(full, _int(check_run_id, docs), request.json(docs), docs)
        return Response.json(200, check_run_json(run, emulator.base_url))

    async def for_ref(request: Request, owner: str, repo: str, ref: str) -> Response:
        docs = f"{_CHECKS}#list-check-runs-for-a-git-reference"
        full = authorize(request, f"{owner}/{repo}", ("checks", "read"), docs)
        name = request.query_value("check_name")
        found = [r for r in checks.runs_of(full, head_sha=ref) if name is None or r.name == name]
        per_page, page = _page_args(request)
        shown = found[(page - 1) * per_page : page * per_page]
        return Response.json(
            200,
            {
                "total_count": len(found),
                "check_runs": [check_run_json(r, emulator.base_url) for r in shown],
            },
        )

    async def create_status(request: Request, owner: str, repo: str, sha: str) -> Response:
        full = authorize(request, f"{owner}/{repo}", ("statuses", "write"), _STATUSES)
        status = checks.add_status(full, sha, request.json(_STATUSES), _STATUSES)
        return Response.json(201, status_json(status))

    async def combined_status(request: Request, owner: str, repo: str, ref: str) -> Response:
        docs = f"{_DOCS}/commits/statuses#get-the-combined-status-for-a-specific-reference"
        full = authorize(request, f"{owner}/{repo}", ("statuses", "read"), docs)
        latest = checks.latest_statuses(full, ref)  # not emulated: branch or tag names as ref
        per_page, page = _page_args(request)
        shown = latest[(page - 1) * per_page : page * per_page]
        return Response.json(
            200,
            {
                "state": combined_state(latest),
                "statuses": [status_json(s) for s in shown],
                "sha": ref,
                "total_count": len(latest),
                "repository": {"full_name": full},
                "commit_url": f"{emulator.base_url}/repos/{full}/commits/{ref}",
                "url": f"{emulator.base_url}/repos/{full}/commits/{ref}/status",
            },
        )

    async def cancel_run(request: Request, owner: str, repo: str, run_id: str) -> Response:
        full = authorize(request, f"{owner}/{repo}", ("actions", "write"), _CANCEL)
        number = _int(run_id, _CANCEL)
        jobs = [j for j in emulator.jobs_of(full) if j.run_id == number]
        if not jobs:
            raise errors.not_found(_CANCEL)
        if all(j.status is JobStatus.COMPLETED for j in jobs):
            raise GitHubError(
                409, "Cannot cancel a workflow run that is completed.", documentation_url=_CANCEL
            )
        for job in jobs:  # not emulated: stopping a job already on a runner
            if job.status in (JobStatus.QUEUED, JobStatus.WAITING):
                emulator.cancel_job(job.id)
        checks.note_cancelled(number)
        return Response.json(202, {})

    base = "/repos/{owner}/{repo}"
    return [
        route("POST", f"{base}/check-runs", create),
        route("PATCH", f"{base}/check-runs/{{check_run_id}}", update),
        route("GET", f"{base}/commits/{{ref}}/check-runs", for_ref),
        route("POST", f"{base}/statuses/{{sha}}", create_status),
        route("GET", f"{base}/commits/{{ref}}/status", combined_status),
        route("POST", f"{base}/actions/runs/{{run_id}}/cancel", cancel_run),
    ]
