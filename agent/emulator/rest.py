"""GitHub's REST endpoints that gantryd calls, translated onto `Emulator`.

Routes, status codes and permissions from docs/github.md §3.1 (runners), §4 (jobs) and
§5.2 (App installations and tokens). Authentication as GitHub does it (headers, reference top):
a JWT only as ``Authorization: Bearer``; an installation token as ``Bearer`` or ``token``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.errors import GitHubError
from agent.emulator.jwt import NOT_DECODED
from agent.emulator.models import (
    RunnerScope,
    job_json,
    repository_json,
    runner_group_json,
    runner_json,
    token_json,
)
from agent.emulator.state import Emulator

_DOCS = "https://docs.github.com/rest"
_RUNNERS = f"{_DOCS}/actions/self-hosted-runners"
_GROUPS = f"{_DOCS}/actions/self-hosted-runner-groups"
DEFAULT_PER_PAGE, MAX_PER_PAGE = 30, 100  # §3.4


def _authorization(request: Request) -> tuple[str, str]:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if not credentials.strip():
        raise errors.requires_authentication()
    return scheme.lower(), credentials.strip()


def _jwt(request: Request) -> str:
    """ "If you are passing a JWT, you must use Authorization: Bearer" (reference, headers)."""
    scheme, credentials = _authorization(request)
    if scheme != "bearer":
        raise GitHubError(401, NOT_DECODED)
    return credentials


def _token(request: Request) -> str:
    scheme, credentials = _authorization(request)
    if scheme not in ("bearer", "token"):
        raise errors.bad_credentials()
    return credentials


def _int(text: str, docs: str) -> int:
    """A numeric path parameter; anything else names nothing (404)."""
    if not text.isdigit():
        raise errors.not_found(docs)
    return int(text)


def _page_args(request: Request) -> tuple[int, int]:
    def number(name: str, default: int) -> int:
        value = request.query_value(name) or ""
        return int(value) if value.isdigit() and int(value) > 0 else default

    return min(number("per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE), number("page", 1)


def _link_header(
    base: str, request: Request, page: int, per_page: int, total: int
) -> dict[str, str]:
    """GitHub's ``Link`` pagination header (rel next/last/first/prev)."""
    last = max(1, -(-total // per_page))
    links: list[str] = []

    def link(number: int, rel: str) -> None:
        query = {k: v[-1] for k, v in request.query.items()}
        query.update(page=str(number), per_page=str(per_page))
        links.append(f'<{base}{request.path}?{urlencode(query)}>; rel="{rel}"')

    if page < last:
        link(page + 1, "next")
        link(last, "last")
    if page > 1:
        link(1, "first")
        link(min(page - 1, last), "prev")
    return {"Link": ", ".join(links)} if links else {}


def build_routes(emulator: Emulator) -> list[Route]:
    """The REST route table; every handler first passes `Emulator.maybe_fail` (5xx faults)."""

    def faulty(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        async def wrapped(request: Request, **params: str) -> Response:
            emulator.maybe_fail()
            return await handler(request, **params)

        return wrapped

    # ---- App (JWT) --------------------------------------------------------------------

    async def create_token(request: Request, installation_id: str) -> Response:
        docs = f"{_DOCS}/apps/apps#create-an-installation-access-token-for-an-app"
        jwt = _jwt(request)
        body = request.json(docs)
        if body is not None and not isinstance(body, dict):
            raise errors.invalid_request(f"{body!r} is not an object.", docs)
        token = emulator.issue_token(jwt, _int(installation_id, docs), body)
        return Response.json(201, token_json(token))

    async def repo_installation(request: Request, owner: str, repo: str) -> Response:
        return Response.json(
            200, emulator.installation_for(_jwt(request), repository=f"{owner}/{repo}")
        )

    async def org_installation(request: Request, org: str) -> Response:
        return Response.json(200, emulator.installation_for(_jwt(request), org=org))

    # ---- runners, both scopes ---------------------------------------------------------

    def scoped(
        request: Request,
        level: str,
        docs: str,
        owner: str | None,
        repo: str | None,
        org: str | None,
    ) -> RunnerScope:
        """Authorize the token for the route's scope, with the permission §3.1 names for it."""
        token = _token(request)
        if org is None:
            full = f"{owner}/{repo}"
            emulator.authorize(
                token, permission=("administration", level), repository=full, docs=docs
            )
            return emulator.scope_for(repository=full)
        emulator.authorize(
            token, permission=("organization_self_hosted_runners", level), org=org, docs=docs
        )
        return emulator.scope_for(org=org)

    def runner_routes(prefix: str, where: str) -> list[Route]:
        org_level = prefix.startswith("/orgs")

        def params(kw: dict[str, str]) -> tuple[str | None, str | None, str | None]:
            return kw.get("owner"), kw.get("repo"), kw.get("org")

        async def generate(request: Request, **kw: str) -> Response:
            docs = f"{_RUNNERS}#create-configuration-for-a-just-in-time-runner-for-{where}"
            scope = scoped(request, "write", docs, *params(kw))
            runner, encoded = emulator.generate_jitconfig(scope, request.json(docs), docs=docs)
            body = {"runner": runner_json(runner, online=False), "encoded_jit_config": encoded}
            return Response.json(201, body)

        async def list_runners(request: Request, **kw: str) -> Response:
            docs = f"{_RUNNERS}#list-self-hosted-runners-for-{where}"
            scope = scoped(request, "read", docs, *params(kw))
            per_page, page = _page_args(request)
            found = emulator.runners(scope, name=request.query_value("name"))
            shown = found[(page - 1) * per_page : page * per_page]
            runners = [runner_json(r, online=emulator.is_online(r)) for r in shown]
            links = _link_header(emulator.base_url, request, page, per_page, len(found))
            return Response.json(200, {"total_count": len(found), "runners": runners}, links)

        async def get_runner(request: Request, runner_id: str, **kw: str) -> Response:
            docs = f"{_RUNNERS}#get-a-self-hosted-runner-for-{where}"
            scope = scoped(request, "read", docs, *params(kw))
            runner = emulator.runner(scope, _int(runner_id, docs), docs=docs)
            return Response.json(200, runner_json(runner, online=emulator.is_online(runner)))

        async def delete_runner(request: Request, runner_id: str, **kw: str) -> Response:
            where_from = "an-organization" if org_level else "a-repository"
            docs = f"{_RUNNERS}#delete-a-self-hosted-runner-from-{where_from}"
            scope = scoped(request, "write", docs, *params(kw))
            emulator.delete_runner(scope, _int(runner_id, docs), docs=docs)
            return Response(status=204)

        base = f"{prefix}/actions/runners"
        return [
            route("POST", f"{base}/generate-jitconfig", faulty(generate)),
            route("GET", base, faulty(list_runners)),
            route("GET", f"{base}/{{runner_id}}", faulty(get_runner)),
            route("DELETE", f"{base}/{{runner_id}}", faulty(delete_runner)),
        ]

    async def runner_groups(request: Request, org: str) -> Response:
        docs = f"{_GROUPS}#list-self-hosted-runner-groups-for-an-organization"
        scoped(request, "read", docs, None, None, org)
        per_page, page = _page_args(request)
        found = emulator.runner_groups(org, visible_to=request.query_value("visible_to_repository"))
        shown = found[(page - 1) * per_page : page * per_page]
        groups = [runner_group_json(g, org, emulator.base_url) for g in shown]
        links = _link_header(emulator.base_url, request, page, per_page, len(found))
        return Response.json(200, {"total_count": len(found), "runner_groups": groups}, links)

    async def runner_group(request: Request, org: str, group_id: str) -> Response:
        docs = f"{_GROUPS}#get-a-self-hosted-runner-group-for-an-organization"
        scoped(request, "read", docs, None, None, org)
        group = emulator.runner_group(org, _int(group_id, docs), docs=docs)
        return Response.json(200, runner_group_json(group, org, emulator.base_url))

    async def group_repositories(request: Request, org: str, group_id: str) -> Response:
        docs = f"{_GROUPS}#list-repository-access-to-a-self-hosted-runner-group-in-an-organization"
        scoped(request, "read", docs, None, None, org)
        group = emulator.runner_group(org, _int(group_id, docs), docs=docs)
        per_page, page = _page_args(request)
        found = emulator.group_repositories(group)
        shown = found[(page - 1) * per_page : page * per_page]
        links = _link_header(emulator.base_url, request, page, per_page, len(found))
        body = {
            "total_count": len(found),
            "repositories": [repository_json(r, emulator.base_url) for r in shown],
        }
        return Response.json(200, body, links)

    # ---- jobs (§4: Actions read) ------------------------------------------------------

    async def get_job(request: Request, owner: str, repo: str, job_id: str) -> Response:
        docs = f"{_DOCS}/actions/workflow-jobs#get-a-job-for-a-workflow-run"
        full = f"{owner}/{repo}"
        emulator.authorize(
            _token(request), permission=("actions", "read"), repository=full, docs=docs
        )
        job = emulator.job(_int(job_id, docs), repository=full, docs=docs)
        return Response.json(200, job_json(job, emulator.base_url))

    return [
        route("POST", "/app/installations/{installation_id}/access_tokens", faulty(create_token)),
        route("GET", "/repos/{owner}/{repo}/installation", faulty(repo_installation)),
        route("GET", "/orgs/{org}/installation", faulty(org_installation)),
        *runner_routes("/repos/{owner}/{repo}", "a-repository"),
        *runner_routes("/orgs/{org}", "an-organization"),
        route("GET", "/orgs/{org}/actions/runner-groups", faulty(runner_groups)),
        route("GET", "/orgs/{org}/actions/runner-groups/{group_id}", faulty(runner_group)),
        route(
            "GET",
            "/orgs/{org}/actions/runner-groups/{group_id}/repositories",
            faulty(group_repositories),
        ),
        route("GET", "/repos/{owner}/{repo}/actions/jobs/{job_id}", faulty(get_job)),
    ]
