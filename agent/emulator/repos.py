"""Listing repositories, what gantryd's reconciler does to sweep a configured organization.

    GET /installation/repositories[?per_page=&page=]       (installation token)
        -> {total_count, repository_selection, repositories}
    GET /orgs/{org}/repos[?type=&sort=&direction=&per_page=&page=]   (any token)
        -> [repository]

Both are page-numbered (``per_page`` at most 100, ``Link`` header), as on GitHub. The first
needs an installation access token (a personal token is refused with 403) and lists what the
token reaches: the installation's repositories, or those a narrowed token was made for. The
second lists the organization's repositories the token can see, plus its public ones; an unknown
organization is 404. Repositories are created in id order here, so ``sort=created`` (the
default, newest first) and ``updated``/``pushed`` order by id.
"""

from __future__ import annotations

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.errors import GitHubError
from agent.emulator.models import Installation, Repository, repository_json
from agent.emulator.rest import _link_header, _page_args, _token
from agent.emulator.state import PERSONAL_TOKEN_PREFIXES, Emulator

_DOCS = "https://docs.github.com/rest"
INSTALLATION_DOCS = (
    f"{_DOCS}/apps/installations#list-repositories-accessible-to-the-app-installation"
)
ORG_DOCS = f"{_DOCS}/repos/repos#list-organization-repositories"
TYPES = ("all", "public", "private", "forks", "sources", "member")
SORTS = ("created", "updated", "pushed", "full_name")


def _repositories(emulator: Emulator) -> list[Repository]:
    """Every repository the emulator knows, in creation (id) order.

    The emulator keeps them private to ``state``; this is the one place outside it that reads
    them, and only to list, never to change.
    """
    return sorted(emulator._repos.values(), key=lambda repo: repo.id)


def _reachable(emulator: Emulator, token: str, installation: Installation) -> list[Repository]:
    """The installation's repositories that ``token`` reaches (a narrowed token fewer)."""
    reach = []
    for repo in _repositories(emulator):
        if repo.full_name not in installation.repositories:
            continue
        try:
            emulator.authorize(token, permission=("metadata", "read"), repository=repo.full_name)
        except GitHubError:
            continue
        reach.append(repo)
    return reach


def _choice(request: Request, name: str, allowed: tuple[str, ...], default: str, docs: str) -> str:
    value = request.query_value(name) or default
    if value not in allowed:
        raise errors.invalid_request(f"For '{name}', {value!r} is not a member of {allowed}.", docs)
    return value


def build_routes(emulator: Emulator) -> list[Route]:
    async def installation_repositories(request: Request) -> Response:
        docs = INSTALLATION_DOCS
        token = _token(request)
        emulator.maybe_fail()
        installation = emulator.authorize(token, permission=("metadata", "read"), docs=docs)
        if token.startswith(PERSONAL_TOKEN_PREFIXES):
            raise GitHubError(
                403,
                "You must authenticate with an installation access token in order to list "
                "repositories for an installation.",
                documentation_url=docs,
            )
        found = _reachable(emulator, token, installation)
        per_page, page = _page_args(request)
        shown = found[(page - 1) * per_page : page * per_page]
        body = {
            "total_count": len(found),
            "repository_selection": "selected",
            "repositories": [repository_json(repo, emulator.base_url) for repo in shown],
        }
        links = _link_header(emulator.base_url, request, page, per_page, len(found))
        return Response.json(200, body, links)

    async def org_repositories(request: Request, org: str) -> Response:
        docs = ORG_DOCS
        token = _token(request)
        emulator.maybe_fail()
        installation = emulator.authorize(token, permission=("metadata", "read"), docs=docs)
        of_org = [r for r in _repositories(emulator) if r.owner.login.lower() == org.lower()]
        if not of_org:
            raise errors.not_found(docs)
        kind = _choice(request, "type", TYPES, "all", docs)
        sort = _choice(request, "sort", SORTS, "created", docs)
        usual = "asc" if sort == "full_name" else "desc"
        direction = _choice(request, "direction", ("asc", "desc"), usual, docs)
        reach = {r.id for r in _reachable(emulator, token, installation)}
        visible = [r for r in of_org if r.id in reach or not r.private]
        if kind == "public":
            visible = [r for r in visible if not r.private]
        elif kind == "private":
            visible = [r for r in visible if r.private]
        elif kind == "forks":
            visible = []  # the emulator has no forks; "sources" and "member" are all of them
        key = (lambda r: r.full_name.lower()) if sort == "full_name" else (lambda r: r.id)
        visible.sort(key=key, reverse=direction == "desc")
        per_page, page = _page_args(request)
        shown = visible[(page - 1) * per_page : page * per_page]
        links = _link_header(emulator.base_url, request, page, per_page, len(visible))
        return Response.json(200, [repository_json(r, emulator.base_url) for r in shown], links)

    return [
        route("GET", "/installation/repositories", installation_repositories),
        route("GET", "/orgs/{org}/repos", org_repositories),
    ]
