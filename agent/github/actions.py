"""The REST calls of missed-delivery recovery: workflow runs and jobs (docs/github.md §4), the
repositories of a configured organization, and the App's webhook deliveries (§1.4).

One page per call, so the caller (the reconciler) can stop between pages when its share of the
rate limit is spent; every result carries the rate-limit headers of its answer and the query of
the next page from GitHub's ``Link`` header (page numbers for runs and jobs, an opaque cursor for
deliveries).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from agent.github.auth import parse_github_time
from agent.github.client import GitHubClient, GitHubError
from agent.github.paths import org_path, repo_path

PER_PAGE = 100  # the maximum for every list here


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """``x-ratelimit-limit`` / ``-remaining`` of one answer; None where GitHub sent none
    (GHES disables rate limits by default, §7)."""

    limit: int | None
    remaining: int | None

    @classmethod
    def of(cls, response: httpx.Response) -> RateLimit:
        def number(name: str) -> int | None:
            value = response.headers.get(name, "")
            return int(value) if value.isdigit() else None

        return cls(limit=number("x-ratelimit-limit"), remaining=number("x-ratelimit-remaining"))


@dataclass(frozen=True, kw_only=True)
class Page:
    items: list[Mapping[str, Any]]
    next: Mapping[str, str] | None  # query parameters of the next page, None on the last
    rate: RateLimit


@dataclass(frozen=True, kw_only=True)
class HookDelivery:
    """One attempt of a webhook delivery (``hook-delivery-item``, §1.4)."""

    id: int  # names the attempt in ``/attempts``
    guid: str  # X-GitHub-Delivery, shared by redeliveries
    delivered_at: float  # unix seconds
    ok: bool  # "The data for a failed delivery will have a status value that is not OK"
    event: str
    action: str | None


def _page(response: httpx.Response, key: str | None) -> Page:
    if response.status_code != 200:
        request = response.request
        try:
            message = str(response.json().get("message", response.reason_phrase))
        except (ValueError, AttributeError):
            message = response.reason_phrase
        raise GitHubError(request.method, request.url.path, response.status_code, message)
    body = response.json()
    items = body.get(key, []) if key is not None and isinstance(body, dict) else body
    if not isinstance(items, list):
        raise GitHubError("GET", response.request.url.path, 200, f"no list under {key!r}")
    link = response.links.get("next", {}).get("url")
    following = dict(httpx.URL(link).params) if link else None
    return Page(
        items=[i for i in items if isinstance(i, dict)], next=following, rate=RateLimit.of(response)
    )


async def list_runs(
    client: GitHubClient,
    repository: str,
    *,
    status: str,
    installation_id: int | None,
    page: Mapping[str, str] | None = None,
) -> Page:
    """``GET /repos/{o}/{r}/actions/runs?status=``: one page of runs, newest first."""
    params = dict(page or {"status": status, "per_page": str(PER_PAGE)})
    response = await client.request(
        "GET",
        repo_path(repository, "actions", "runs"),
        installation_id=installation_id,
        params=params,
    )
    return _page(response, "workflow_runs")


async def list_run_jobs(
    client: GitHubClient,
    repository: str,
    run_id: int,
    *,
    installation_id: int | None,
    page: Mapping[str, str] | None = None,
) -> Page:
    """``GET /repos/{o}/{r}/actions/runs/{id}/jobs``: the latest attempt's jobs, one page."""
    params = dict(page or {"filter": "latest", "per_page": str(PER_PAGE)})
    response = await client.request(
        "GET",
        repo_path(repository, "actions", "runs", run_id, "jobs"),
        installation_id=installation_id,
        params=params,
    )
    return _page(response, "jobs")


async def list_installation_repositories(
    client: GitHubClient, *, installation_id: int, page: Mapping[str, str] | None = None
) -> Page:
    """``GET /installation/repositories`` (the installation's token): one page of what the
    installation reaches, ``{total_count, repositories}``."""
    params = dict(page or {"per_page": str(PER_PAGE)})
    response = await client.request(
        "GET", "/installation/repositories", installation_id=installation_id, params=params
    )
    return _page(response, "repositories")


async def list_org_repositories(
    client: GitHubClient, org: str, *, page: Mapping[str, str] | None = None
) -> Page:
    """``GET /orgs/{org}/repos`` (a token): one page of the organization's repositories the
    token can see, a plain array."""
    params = dict(page or {"type": "all", "per_page": str(PER_PAGE)})
    response = await client.request("GET", org_path(org, "repos"), params=params)
    return _page(response, None)


async def list_app_deliveries(
    client: GitHubClient, *, page: Mapping[str, str] | None = None
) -> tuple[list[HookDelivery], Page]:
    """``GET /app/hook/deliveries`` (JWT): one page of attempts, newest first."""
    params = dict(page or {"per_page": str(PER_PAGE)})
    response = await client.request("GET", "/app/hook/deliveries", params=params, as_app=True)
    result = _page(response, None)
    deliveries = []
    for item in result.items:
        try:
            deliveries.append(
                HookDelivery(
                    id=int(item["id"]),
                    guid=str(item["guid"]),
                    delivered_at=parse_github_time(str(item["delivered_at"])),
                    ok=item.get("status") == "OK",
                    event=str(item.get("event", "")),
                    action=item.get("action") if isinstance(item.get("action"), str) else None,
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise GitHubError("GET", "/app/hook/deliveries", 200, f"bad item: {exc}") from exc
    return deliveries, result


async def redeliver(client: GitHubClient, delivery_id: int) -> RateLimit:
    """``POST /app/hook/deliveries/{id}/attempts`` (JWT): GitHub sends it again, same GUID."""
    path = f"/app/hook/deliveries/{delivery_id}/attempts"
    response = await client.request("POST", path, as_app=True)
    if response.status_code != 202:
        raise GitHubError("POST", path, response.status_code, response.reason_phrase)
    return RateLimit.of(response)
