"""The request path to GitHub on httpx (trio through anyio): auth, pacing, retries, errors.

Kept apart from the endpoint methods (``client``) so every request, whichever endpoint or
caller, takes the same way: every call carries a timeout, retries connection errors and 5xx
with exponential backoff and jitter, never sends what the rate limit would refuse and waits out
refusals (`RateLimitGate`, docs/github.md §7), and runs under a concurrency cap. GitHub's
refusals become ``GitHubError`` naming the endpoint, the status and GitHub's own message; a
missing App or token permission becomes ``PermissionMissing`` naming the permission to grant.

Paths are relative to ``api_url``, so a GitHub Enterprise Server base such as
``https://HOST/api/v3`` keeps its prefix (docs/github.md §9; httpx joins ``base_url`` and
``"/repos/…"`` by appending, tests/github/test_transport.py proves it against the emulator).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx
import trio

from agent.github.auth import AppAuth, TokenAuth, parse_github_time, same_credentials
from agent.github.ratelimit import Quota, RateLimitGate
from agent.github.records import GitHubError, PermissionMissing, RunnerTarget

API_VERSION = "2022-11-28"
USER_AGENT = "gantryd"
MAX_ATTEMPTS = 6  # per logical request, for 5xx and connection errors
MAX_RATE_LIMITED = 10  # rate-limit refusals waited out per logical request
BACKOFF_BASE = 0.5  # seconds, doubled per attempt
BACKOFF_MAX = 30.0
RATE_LIMIT_WAIT_MAX = 900.0  # seconds; longer waits surface as errors instead
PER_PAGE = 100  # GitHub's maximum page size (§3.4)


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, …): doubling, capped, with jitter."""
    delay: float = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.5)


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


class GitHubTransport:
    """Authenticated, paced and retried GitHub REST requests for one set of credentials.

    Use as an async context manager; it owns an httpx.AsyncClient. Each credential (the App's
    JWT, each installation, the token) has its own rate-limit budget at GitHub, so each gets its
    own `RateLimitGate`; ``quotas`` exposes them for metrics. A reload changes the credentials
    (``set_auth``) and the limits (``set_limits``) in place: requests in flight finish with what
    they started with, the next ones use the new values.
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
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            transport=transport,
            trust_env=False,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": USER_AGENT,
            },
        )
        self._installations: dict[str, int] = {}
        self._gates: dict[str, RateLimitGate] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def auth(self) -> AppAuth | TokenAuth:
        return self._auth

    @property
    def is_app(self) -> bool:
        return isinstance(self._auth, AppAuth)

    def set_auth(self, auth: AppAuth | TokenAuth) -> bool:
        """Use ``auth`` from the next request on; False (nothing changes) if it is the same App
        key or token as the one in use.

        The old credentials' installation tokens go with them (``auth`` has its own cache).
        What was learnt about the old identity (installation ids, runner group ids, rate-limit
        budgets) is kept for a new key of the same App id and forgotten otherwise.
        """
        if same_credentials(self._auth, auth):
            return False
        old = self._auth
        if not (
            isinstance(old, AppAuth) and isinstance(auth, AppAuth) and old.app_id == auth.app_id
        ):
            self._forget_identity()
        self._auth = auth
        return True

    def _forget_identity(self) -> None:
        """Drop what was learnt about the credentials' identity (another App, or a token)."""
        self._installations.clear()
        self._gates.clear()

    def set_limits(self, *, timeout: float, max_concurrency: int) -> None:
        """Per-request timeout and requests in flight at once, from the next request on."""
        self._timeout = timeout
        self._limiter.total_tokens = max_concurrency

    @property
    def quotas(self) -> dict[str, Quota]:
        """Primary budget per credential ("app", "installation <id>", "token")."""
        return {key: gate.quota for key, gate in self._gates.items()}

    @property
    def shared_gates(self) -> dict[str, RateLimitGate]:
        """Each credential's gate, keyed by whose budget it is at GitHub, so hosts spending the
        same credential share the key (``agent.fleet.ratelimits``): an installation id is
        global, the App by its id, a token by a digest (never the token). The App's or the
        token's own gate is made here if no request made it yet, so a host learns the fleet's
        figure before its first request."""
        auth = self._auth
        if isinstance(auth, AppAuth):
            who = f"app {auth.app_id}"
            self._gate("app")
        else:
            who = "token " + hashlib.sha256(auth.token.reveal().encode()).hexdigest()[:16]
            self._gate("token")
        return {
            key if key.startswith("installation ") else who: gate
            for key, gate in self._gates.items()
        }

    @property
    def rate_limit_remaining(self) -> int | None:
        """The lowest remaining budget of any credential, for the metrics gauge."""
        known = [q.remaining for q in self.quotas.values() if q.remaining is not None]
        return max(0, min(known)) if known else None

    # -- plumbing -------------------------------------------------------------------------

    def _gate(self, key: str) -> RateLimitGate:
        return self._gates.setdefault(key, RateLimitGate())

    async def _send(
        self,
        method: str,
        path: str,
        *,
        authorization: str,
        gate: str,
        json: object = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        http_timeout: float | None = None,
        long_poll: bool = False,
    ) -> httpx.Response:
        """One logical request: retried on 5xx and connection errors, paced by rate limits.

        ``path`` may be an absolute URL (another host, e.g. the Actions service).
        ``http_timeout`` replaces the client's httpx timeout for this one request (a transport
        setting, not a deadline). A ``long_poll`` is held open by the server on purpose, so it
        does not take one of the ``max_concurrency`` places.
        """
        limits = self._gate(gate)
        failures = limited = 0
        cap = contextlib.nullcontext() if long_poll else self._limiter
        while True:
            try:
                async with cap, limits.slot():
                    response = await self._http.request(
                        method,
                        path,
                        json=json,
                        params=params,
                        headers={**(headers or {}), "Authorization": authorization},
                        timeout=self._timeout if http_timeout is None else http_timeout,
                    )
                    limits.observe(response.headers)
            except httpx.TransportError as exc:
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise GitHubError(method, path, None, str(exc) or type(exc).__name__) from exc
                await trio.sleep(backoff_delay(failures))
                continue
            wait = limits.refused(response.status_code, response.headers)
            if wait is not None:
                limited += 1
                if wait > RATE_LIMIT_WAIT_MAX or limited > MAX_RATE_LIMITED:
                    raise GitHubError(
                        method,
                        path,
                        response.status_code,
                        f"rate limited ({_message(response)}); GitHub asks to wait {wait:.0f}s",
                    )
                continue  # the gate now holds every request of this credential for `wait`
            if response.status_code >= 500:
                failures += 1
                if failures < MAX_ATTEMPTS:
                    await trio.sleep(backoff_delay(failures))
                    continue
            return response

    async def _request(
        self,
        method: str,
        path: str,
        *,
        installation_id: int | None = None,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """A request authenticated as the installation (App) or with the token.

        An installation token GitHub refuses (401: expired early, revoked) is dropped and the
        request made once more with a fresh one.
        """
        auth = self._auth  # a reload may swap it while this request waits
        if isinstance(auth, TokenAuth):
            return await self._send(
                method,
                path,
                authorization=f"Bearer {auth.token.reveal()}",
                gate="token",
                json=json,
                params=params,
            )
        if installation_id is None:
            raise ValueError(f"{method} {path} needs an installation id with App auth")
        for refreshed in (False, True):
            token = await auth.installation_token(
                installation_id, self._fetch_installation_token, force=refreshed
            )
            response = await self._send(
                method,
                path,
                authorization=f"Bearer {token}",
                gate=f"installation {installation_id}",
                json=json,
                params=params,
            )
            if response.status_code != 401 or refreshed:
                return response
            auth.forget(installation_id)
        raise AssertionError("unreachable")

    async def _app_request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        auth = self._auth
        if not isinstance(auth, AppAuth):
            raise GitHubError(method, path, None, "needs a GitHub App (app_id, private_key_file)")
        return await self._send(
            method,
            path,
            authorization=f"Bearer {auth.app_jwt()}",
            gate="app",
            json=json,
            params=params,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        installation_id: int | None = None,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        as_app: bool = False,
    ) -> httpx.Response:
        """Any REST call with this client's retries, rate limiting and auth; the raw answer.

        ``as_app``: authenticate as the App itself (JWT: ``/app/...`` routes); otherwise as the
        installation (App auth; ``installation_id`` required) or with the token.
        """
        if as_app:
            return await self._app_request(method, path, json=json, params=params)
        return await self._request(
            method, path, installation_id=installation_id, json=json, params=params
        )

    async def send(
        self,
        method: str,
        url: str,
        *,
        authorization: str,
        gate: str,
        json: object = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        http_timeout: float | None = None,
        long_poll: bool = False,
    ) -> httpx.Response:
        """A request with credentials the caller holds (``RemoteAuth``, the Actions service's
        own tokens), under this client's retries, pacing and concurrency cap; the raw answer.

        ``gate`` names the rate-limit budget the credential spends (one per credential kind).
        """
        return await self._send(
            method,
            url,
            authorization=authorization,
            gate=gate,
            json=json,
            params=params,
            headers=headers,
            http_timeout=http_timeout,
            long_poll=long_poll,
        )

    async def _fetch_installation_token(self, installation_id: int, jwt: str) -> tuple[str, float]:
        path = f"/app/installations/{installation_id}/access_tokens"
        response = await self._send("POST", path, authorization=f"Bearer {jwt}", gate="app")
        self._check(response, path, 201)
        body = response.json()
        return str(body["token"]), parse_github_time(str(body["expires_at"]))

    def check(self, response: httpx.Response, path: str, *expected: int) -> httpx.Response:
        """The response if its status is expected, else the `GitHubError` (or
        `PermissionMissing`) naming ``path``: for callers of `request`."""
        return self._check(response, path, *expected)

    def _check(self, response: httpx.Response, path: str, *expected: int) -> httpx.Response:
        """The response if its status is expected, else the error naming ``path``."""
        if response.status_code in expected:
            return response
        method = response.request.method
        accepted = response.headers.get("x-accepted-github-permissions")
        if response.status_code == 403 and accepted:
            raise PermissionMissing(method, path, _message(response), accepted, app=self.is_app)
        raise GitHubError(method, path, response.status_code, _message(response))

    async def _installation_for(
        self, target: RunnerTarget | str, installation_id: int | None
    ) -> int:
        """The installation to act as: the one given (from the payload), else looked up."""
        if not self.is_app:
            return 0  # unused with a token
        if installation_id is not None:
            return installation_id
        if isinstance(target, str):
            target = RunnerTarget(repository=target)
        return await self.installation_id(target)

    async def _pages(
        self, path: str, key: str, *, installation_id: int | None, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Every item of a page-numbered list endpoint (``per_page`` ≤ 100, §3.4)."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            response = await self._request(
                "GET",
                path,
                installation_id=installation_id,
                params={**params, "per_page": PER_PAGE, "page": page},
            )
            batch = self._check(response, path, 200).json()[key]
            items.extend(batch)
            if len(batch) < PER_PAGE:
                return items
            page += 1

    async def installation_id(self, target: RunnerTarget) -> int:
        """The App installation covering a repository or organization (cached; §5.2)."""
        key = target.path
        if key not in self._installations:
            path = f"{target.path}/installation"
            response = await self._app_request("GET", path)
            self._installations[key] = int(self._check(response, path, 200).json()["id"])
        return self._installations[key]
