"""GitHub REST client on httpx (trio through anyio), the only place that speaks HTTP to GitHub.

Every call carries a timeout, retries connection errors and 5xx with exponential backoff and
jitter, waits out rate limits (``retry-after``, else ``x-ratelimit-reset`` when the remaining
quota is 0; reference §7), and runs under a concurrency cap. GitHub's refusals become
``GitHubError`` naming the endpoint, the status and GitHub's own message.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
import trio

from agent.github.auth import AppAuth, Secret, TokenAuth, parse_github_time

API_VERSION = "2022-11-28"
USER_AGENT = "gantryd"
MAX_ATTEMPTS = 5
BACKOFF_BASE = 0.5  # seconds, doubled per attempt
BACKOFF_MAX = 30.0
RATE_LIMIT_WAIT_MAX = 900.0  # seconds; longer waits surface as errors instead


class GitHubError(Exception):
    """GitHub answered with an error status, or could not be reached."""

    def __init__(self, method: str, path: str, status: int | None, message: str) -> None:
        shown = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"GitHub {method} {path}: {shown}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class DeleteOutcome(enum.StrEnum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"  # already gone: as good as deleted
    BUSY = "busy"  # 422: a job was just assigned; leave the runner alone


@dataclass(frozen=True, kw_only=True)
class RunnerTarget:
    """Where a runner is registered: a repository ("owner/name") or an organization."""

    repository: str | None = None
    organization: str | None = None

    @property
    def path(self) -> str:
        if self.repository is not None:
            return f"/repos/{self.repository}"
        return f"/orgs/{self.organization}"

    @property
    def owner(self) -> str:
        if self.repository is not None:
            return self.repository.split("/", 1)[0]
        assert self.organization is not None
        return self.organization


@dataclass(frozen=True, kw_only=True)
class JitConfig:
    runner_id: int
    runner_name: str
    encoded: Secret  # the runner's credentials: never logged, never in docker inspect


def _backoff(attempt: int) -> float:
    delay: float = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.5)


def _rate_limit_wait(response: httpx.Response, now: float) -> float | None:
    """Seconds to wait if the response is a rate-limit refusal, else None."""
    if response.status_code not in (403, 429):
        return None
    retry_after = response.headers.get("retry-after")
    if retry_after is not None and retry_after.isdigit():
        return float(retry_after)
    if response.headers.get("x-ratelimit-remaining") == "0":
        reset = response.headers.get("x-ratelimit-reset", "")
        return max(1.0, float(reset) - now) if reset.isdigit() else 60.0
    if response.status_code == 429:
        return 60.0
    return None


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no message"
    if isinstance(body, dict):
        message = str(body.get("message", "")) or response.reason_phrase
        errors = body.get("errors")
        return f"{message} {errors}" if errors else message
    return response.reason_phrase


class GitHubClient:
    """Authenticated GitHub REST calls for one set of credentials.

    Use as an async context manager; it owns an httpx.AsyncClient.
    """

    def __init__(
        self,
        api_url: str,
        auth: AppAuth | TokenAuth,
        *,
        timeout: float = 30.0,
        max_concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._auth = auth
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": USER_AGENT,
            },
        )
        self._installations: dict[str, int] = {}
        self.rate_limit_remaining: int | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def is_app(self) -> bool:
        return isinstance(self._auth, AppAuth)

    # -- plumbing -------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        authorization: str,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One logical request: retried on 5xx and connection errors, paced by rate limits."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._limiter:
                    response = await self._http.request(
                        method,
                        path,
                        json=json,
                        params=params,
                        headers={"Authorization": authorization},
                    )
            except httpx.TransportError as exc:
                if attempt == MAX_ATTEMPTS:
                    raise GitHubError(method, path, None, str(exc) or type(exc).__name__) from exc
                await trio.sleep(_backoff(attempt))
                continue
            remaining = response.headers.get("x-ratelimit-remaining")
            if remaining is not None and remaining.isdigit():
                self.rate_limit_remaining = int(remaining)
            wait = _rate_limit_wait(response, time.time())
            if wait is not None and wait <= RATE_LIMIT_WAIT_MAX and attempt < MAX_ATTEMPTS:
                await trio.sleep(wait)
                continue
            if response.status_code >= 500 and attempt < MAX_ATTEMPTS:
                await trio.sleep(_backoff(attempt))
                continue
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        installation_id: int | None = None,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """A request authenticated as the installation (App) or with the token."""
        if isinstance(self._auth, TokenAuth):
            return await self._send(
                method,
                path,
                authorization=f"Bearer {self._auth.token.reveal()}",
                json=json,
                params=params,
            )
        if installation_id is None:
            raise ValueError(f"{method} {path} needs an installation id with App auth")
        for refreshed in (False, True):
            token = await self._auth.installation_token(
                installation_id, self._fetch_installation_token, force=refreshed
            )
            response = await self._send(
                method, path, authorization=f"Bearer {token}", json=json, params=params
            )
            if response.status_code != 401 or refreshed:
                return response
            self._auth.forget(installation_id)
        raise AssertionError("unreachable")

    async def _fetch_installation_token(self, installation_id: int, jwt: str) -> tuple[str, float]:
        path = f"/app/installations/{installation_id}/access_tokens"
        response = await self._send("POST", path, authorization=f"Bearer {jwt}")
        if response.status_code != 201:
            raise GitHubError("POST", path, response.status_code, _message(response))
        body = response.json()
        return str(body["token"]), parse_github_time(str(body["expires_at"]))

    @staticmethod
    def _check(response: httpx.Response, *expected: int) -> httpx.Response:
        if response.status_code not in expected:
            request = response.request
            raise GitHubError(
                request.method, request.url.path, response.status_code, _message(response)
            )
        return response

    # -- endpoints ------------------------------------------------------------------------

    async def installation_id(self, target: RunnerTarget) -> int:
        """The App installation covering a repository or organization (cached)."""
        assert isinstance(self._auth, AppAuth)
        key = target.path
        if key not in self._installations:
            response = await self._send(
                "GET", f"{target.path}/installation", authorization=f"Bearer {self._auth.app_jwt()}"
            )
            self._installations[key] = int(self._check(response, 200).json()["id"])
        return self._installations[key]

    async def generate_jitconfig(
        self,
        target: RunnerTarget,
        *,
        name: str,
        labels: tuple[str, ...],
        runner_group_id: int,
        installation_id: int | None,
    ) -> JitConfig:
        """Register a just-in-time runner; GitHub answers with its encoded config once only."""
        if self.is_app and installation_id is None:
            installation_id = await self.installation_id(target)
        response = await self._request(
            "POST",
            f"{target.path}/actions/runners/generate-jitconfig",
            installation_id=installation_id,
            json={"name": name, "runner_group_id": runner_group_id, "labels": list(labels)},
        )
        body = self._check(response, 201).json()
        return JitConfig(
            runner_id=int(body["runner"]["id"]),
            runner_name=str(body["runner"]["name"]),
            encoded=Secret(str(body["encoded_jit_config"])),
        )

    async def delete_runner(
        self, target: RunnerTarget, runner_id: int, *, installation_id: int | None
    ) -> DeleteOutcome:
        """Deregister a runner; 404 counts as done, 422 means a job was just assigned."""
        if self.is_app and installation_id is None:
            installation_id = await self.installation_id(target)
        response = await self._request(
            "DELETE", f"{target.path}/actions/runners/{runner_id}", installation_id=installation_id
        )
        if response.status_code == 404:
            return DeleteOutcome.NOT_FOUND
        if response.status_code == 422:
            return DeleteOutcome.BUSY
        self._check(response, 204)
        return DeleteOutcome.DELETED
