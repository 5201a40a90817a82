"""The emulator's own HTTP API under ``/_emulator`` (tests, ``gantryd demo``, manual runs).

What a person does on GitHub's web site — pushing commits that queue jobs, adding webhooks,
reading logs — and what a test needs to steer it (faults). Not part of GitHub's API.

    POST  /_emulator/jobs            {repository, labels, script, name?, workflow_name?,
                                      head_branch?, installation?, environment?, run_id?,
                                      group?, container?}
                                                                           -> 201 job
    GET   /_emulator/jobs/{id}[?wait_status=completed&timeout=30]
                                                              -> 200 job (+ exit_code, log)
    POST  /_emulator/jobs/{id}/cancel                                      -> 202 job
    POST  /_emulator/jobs/{id}/review {state: "approved" | "rejected"}     -> 200 job
    POST  /_emulator/jobs/{id}/rerun                                       -> 201 new job
    POST  /_emulator/runs/{run_id}/rerun  {failed_only?}                   -> 201 [new job]
    POST  /_emulator/environments    {repository, name, required_reviewers?} -> 201
    POST  /_emulator/orgs/{org}/runner-groups
                                     {name, visibility?, allows_public_repositories?,
                                      repositories?}                       -> 201 group
    PATCH /_emulator/orgs/{org}/runner-groups/{id}
                                     {visibility?, allows_public_repositories?,
                                      repositories?}                       -> 200 group
    POST  /_emulator/hooks           {url, secret, content_type?, repository?, org?} -> 201
    GET   /_emulator/deliveries                                            -> 200 [delivery]
    PUT   /_emulator/faults          {drop_rate?, ..., server_error_rate?} -> 200 faults

The review stands in for a required reviewer's "Approve and deploy" / "Reject" (GitHub's own
``POST .../runs/{run_id}/pending_deployments`` needs a reviewer's user token, not the App's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio

from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.errors import GitHubError
from agent.emulator.models import Job, JobStatus, job_json, runner_group_json
from agent.emulator.state import Emulator
from agent.emulator.webhooks import Faults

MAX_WAIT = 120.0  # seconds a control-API wait may last


def _object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise GitHubError(400, "Expected a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ... or not isinstance(value, kind):
        raise GitHubError(422, f"{name!r} must be given as {kind.__name__}")
    return value


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    """``body[name]`` if given (a bool is not an int here), else None."""
    value = body.get(name)
    wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if value is not None and wrong:
        raise GitHubError(422, f"{name!r} must be given as {kind.__name__}")
    return value


def build_routes(emulator: Emulator) -> list[Route]:
    def view(job: Job) -> dict[str, Any]:
        body = job_json(job, emulator.base_url)
        body["exit_code"] = job.exit_code
        body["log"] = job.log.decode("utf-8", "replace")
        return body

    def job_id(text: str) -> int:
        if not text.isdigit():
            raise GitHubError(404, "Not Found")
        return int(text)

    async def create_job(request: Request) -> Response:
        body = _object(request)
        labels = _field(body, "labels", list)
        installation = _optional(body, "installation", int)
        job = emulator.create_job(
            _field(body, "repository", str),
            labels,
            _field(body, "script", str),
            name=_field(body, "name", str, "build"),
            workflow_name=_field(body, "workflow_name", str, "CI"),
            head_branch=_field(body, "head_branch", str, "main"),
            installation=installation,
            environment=_optional(body, "environment", str),
            run_id=_optional(body, "run_id", int),
            container=_optional(body, "container", str),
            group=_optional(body, "group", str),
        )
        return Response.json(201, view(job))

    async def get_job(request: Request, id: str) -> Response:
        job = emulator.job(job_id(id))
        wanted = request.query_value("wait_status")
        if wanted is not None:
            if wanted not in set(JobStatus):
                raise GitHubError(422, f"wait_status must be one of {[s.value for s in JobStatus]}")
            timeout = request.query_value("timeout") or "30"
            seconds = (
                min(float(timeout), MAX_WAIT) if timeout.replace(".", "", 1).isdigit() else 30.0
            )
            with trio.move_on_after(seconds):
                await emulator.wait_job(job.id, wanted)
        return Response.json(200, view(job))

    async def cancel_job(request: Request, id: str) -> Response:
        return Response.json(202, view(emulator.cancel_job(job_id(id))))

    async def review_job(request: Request, id: str) -> Response:
        state = _field(_object(request), "state", str)
        if state not in ("approved", "rejected"):
            raise GitHubError(422, "'state' must be 'approved' or 'rejected'")
        return Response.json(
            200, view(emulator.review_job(job_id(id), approve=state == "approved"))
        )

    async def rerun_job(request: Request, id: str) -> Response:
        return Response.json(201, view(emulator.rerun_job(job_id(id))))

    async def rerun_run(request: Request, run_id: str) -> Response:
        body = request.json() or {}
        if not isinstance(body, dict):
            raise GitHubError(400, "Expected a JSON object")
        failed_only = _field(body, "failed_only", bool, False)
        jobs = emulator.jobs_of_run(job_id(run_id))
        if not jobs:
            raise GitHubError(404, "Not Found")
        again = emulator.rerun_run(
            jobs[0].repository.full_name, jobs[0].run_id, failed_only=failed_only
        )
        return Response.json(201, [view(job) for job in again])

    async def add_environment(request: Request) -> Response:
        body = _object(request)
        environment = emulator.add_environment(
            _field(body, "repository", str),
            _field(body, "name", str),
            required_reviewers=_field(body, "required_reviewers", bool, False),
        )
        return Response.json(
            201,
            {
                "id": environment.id,
                "name": environment.name,
                "repository": environment.repository.full_name,
                "required_reviewers": environment.required_reviewers,
            },
        )

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        repositories = _optional(body, "repositories", list)
        if repositories is not None and not all(isinstance(r, str) for r in repositories):
            raise GitHubError(422, "'repositories' must be a list of 'owner/repo' names")
        return {
            "visibility": _optional(body, "visibility", str),
            "allows_public_repositories": _optional(body, "allows_public_repositories", bool),
            "repositories": repositories,
        }

    async def add_group(request: Request, org: str) -> Response:
        body = _object(request)
        name = _field(body, "name", str)
        settings = {k: v for k, v in policy(body).items() if v is not None}
        try:
            group = emulator.add_runner_group(org, name, **settings)
        except ValueError as error:
            raise GitHubError(422, str(error)) from None
        return Response.json(201, runner_group_json(group, org, emulator.base_url))

    async def change_group(request: Request, org: str, id: str) -> Response:
        try:
            group = emulator.set_runner_group_policy(org, job_id(id), **policy(_object(request)))
        except ValueError as error:
            raise GitHubError(422, str(error)) from None
        return Response.json(200, runner_group_json(group, org, emulator.base_url))

    async def add_hook(request: Request) -> Response:
        body = _object(request)
        try:
            hook = emulator.add_hook(
                _field(body, "url", str),
                _field(body, "secret", str, ""),
                content_type=_field(body, "content_type", str, "json"),
                repository=body.get("repository"),
                org=body.get("org"),
            )
        except (ValueError, KeyError) as error:
            raise GitHubError(422, f"cannot add hook: {error}") from None
        return Response.json(201, hook.hook_json(emulator.app_id))

    async def deliveries(request: Request) -> Response:
        return Response.json(
            200,
            [
                {
                    "id": d.id,
                    "guid": d.outgoing.guid,
                    "hook_id": d.outgoing.hook_id,
                    "event": d.outgoing.event,
                    "action": d.outgoing.action,
                    "installation_id": d.outgoing.installation_id,
                    "repository_id": d.outgoing.repository_id,
                    "redelivery": d.redelivery,
                    "delivered_at": d.delivered_at,
                    "duration": d.duration,
                    "status": d.status,
                    "status_code": d.status_code,
                }
                for d in emulator.deliveries
            ],
        )

    async def set_faults(request: Request) -> Response:
        body = _object(request)
        names = {f.name for f in dataclasses.fields(Faults)}
        unknown = set(body) - names
        if unknown:
            raise GitHubError(
                422, f"unknown fault settings {sorted(unknown)}; known: {sorted(names)}"
            )
        try:
            emulator.faults = Faults(**{k: float(v) for k, v in body.items()})
        except (TypeError, ValueError) as error:
            raise GitHubError(422, str(error)) from None
        return Response.json(200, dataclasses.asdict(emulator.faults))

    return [
        route("POST", "/_emulator/jobs", create_job),
        route("GET", "/_emulator/jobs/{id}", get_job),
        route("POST", "/_emulator/jobs/{id}/cancel", cancel_job),
        route("POST", "/_emulator/jobs/{id}/review", review_job),
        route("POST", "/_emulator/jobs/{id}/rerun", rerun_job),
        route("POST", "/_emulator/runs/{run_id}/rerun", rerun_run),
        route("POST", "/_emulator/environments", add_environment),
        route("POST", "/_emulator/orgs/{org}/runner-groups", add_group),
        route("PATCH", "/_emulator/orgs/{org}/runner-groups/{id}", change_group),
        route("POST", "/_emulator/hooks", add_hook),
        route("GET", "/_emulator/deliveries", deliveries),
        route("PUT", "/_emulator/faults", set_faults),
    ]
