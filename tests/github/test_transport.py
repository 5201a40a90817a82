"""GitHubTransport (through GitHubClient) against the strict emulator: GHES paths, token
refresh, errors naming the endpoint and permission, retries, rate limits, reloaded limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, Faults
from agent.emulator.asgi import Receive, Scope, Send
from agent.emulator.ratelimit import RateLimitPolicy
from agent.emulator.server import build_app
from agent.github.auth import AppAuth, Secret, TokenAuth
from agent.github.client import GitHubClient, GitHubError, PermissionMissing

from .conftest import APP_ID, Clock
from .test_client import APP, register


class Recorder:
    """An ASGI layer that records request paths, optionally serving under a path prefix."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any], prefix: str = "") -> None:
        self.app = app
        self.prefix = prefix
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
            if not scope["path"].startswith(self.prefix + "/"):
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            scope = {**scope, "path": scope["path"][len(self.prefix) :]}
        await self.app(scope, receive, send)


async def test_ghes_base_url_keeps_its_api_v3_prefix(
    emulator: Emulator, app_key: rsa.RSAPrivateKey
) -> None:
    """docs/github.md §9: GHES serves the REST API under https://HOST/api/v3."""
    server = Recorder(build_app(emulator), prefix="/api/v3")
    transport = httpx.ASGITransport(app=server)
    for api_url in ("https://ghes.example/api/v3", "https://ghes.example/api/v3/"):
        auth = AppAuth(app_id=str(APP_ID), key=app_key)
        async with GitHubClient(api_url, auth, transport=transport) as github:
            await register(github, f"ghes-{len(server.paths)}")
    assert server.paths and all(p.startswith("/api/v3/") for p in server.paths)
    assert "/api/v3/repos/acme/app/installation" in server.paths
    assert "/api/v3/repos/acme/app/actions/runners/generate-jitconfig" in server.paths


async def test_token_refresh_when_it_expires_mid_run(
    emulator: Emulator, clock: Clock, app_key: rsa.RSAPrivateKey
) -> None:
    """The cached token dies at GitHub while gantryd still trusts it: one 401, one refresh."""
    emulator.token_lifetime = 400.0  # > the client's 300 s refresh margin: cached, then stale
    # GitHub removes idle JIT runners after 5 minutes; the jump below would remove the first two
    # before they are counted. Idle expiry is not under test here.
    emulator.runner_idle_timeout = 3600.0
    server = Recorder(build_app(emulator))
    auth = AppAuth(app_id=str(APP_ID), key=app_key)
    async with GitHubClient(
        "http://github.test", auth, transport=httpx.ASGITransport(app=server)
    ) as github:
        await register(github, "before")
        await register(github, "still-cached")
        clock.offset += 401.0  # GitHub's clock passes the token's expiry; ours does not
        await register(github, "after-expiry")
    tokens = [p for p in server.paths if p.endswith("/access_tokens")]
    jit = [p for p in server.paths if p.endswith("/generate-jitconfig")]
    assert len(tokens) == 2  # the first, and the refresh after the 401
    assert len(jit) == 4  # three registrations, one of them retried once
    assert {r.name for r in emulator.runners(emulator.scope_for(repository="acme/app"))} == {
        "before",
        "still-cached",
        "after-expiry",
    }


async def test_missing_permission_names_it(
    app_client: Callable[..., GitHubClient], emulator: Emulator
) -> None:
    emulator._installations[11].permissions.pop("administration")
    async with app_client() as github:
        with pytest.raises(PermissionMissing) as caught:
            await register(github, "r")
    message = str(caught.value)
    assert "POST /repos/acme/app/actions/runners/generate-jitconfig" in message
    assert "HTTP 403: Resource not accessible by integration" in message
    assert 'grant the GitHub App the "administration: write" permission' in message
    assert caught.value.permission == "administration=write"


async def test_missing_permission_with_a_token(
    token_github: GitHubClient, emulator: Emulator
) -> None:
    """A token's 403 says to give the token the permission, not the App."""
    pat = next(t for t in emulator._tokens.values() if t.token.startswith("github_pat_"))
    pat.permissions.pop("statuses")
    with pytest.raises(PermissionMissing) as caught:
        await token_github.create_commit_status(
            "acme/app", "a" * 40, {"state": "pending"}, installation_id=None
        )
    assert 'give the token the "statuses: write" permission' in str(caught.value)


async def test_other_4xx_name_endpoint_and_githubs_message(github: GitHubClient) -> None:
    await register(github, "twice")
    with pytest.raises(GitHubError) as caught:
        await register(github, "twice")
    assert caught.value.status == 409
    assert str(caught.value).startswith(
        "GitHub POST /repos/acme/app/actions/runners/generate-jitconfig: HTTP 409: Already exists"
    )


async def test_server_errors_and_429_bursts_are_retried(
    github: GitHubClient, emulator: Emulator
) -> None:
    await register(github, "first")  # fetches the installation token
    emulator.faults = Faults(server_error_rate=0.2)
    limits = emulator.rate_limits
    limits.policy = RateLimitPolicy(burst_rate=0.05, burst_seconds=1)
    limits.open_burst("installation 11", 1)  # one burst for sure, more at random
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(register, github, f"r{i}")
    assert len(emulator.runners(emulator.scope_for(repository="acme/app"))) == 21
    # Inside a burst only requests already in flight may arrive (≤ the concurrency cap),
    # and the first burst saw some: the client did run into it.
    assert limits.burst_arrivals[0] >= 1 and max(limits.burst_arrivals) <= 8
    assert limits.over_primary == limits.over_concurrency == 0


async def test_spent_budget_holds_requests_until_the_reset(
    github: GitHubClient, emulator: Emulator
) -> None:
    """§7: once x-ratelimit-remaining is 0, wait for x-ratelimit-reset instead of firing."""
    emulator.rate_limits.policy = RateLimitPolicy(limit=12, window=1.0)
    await register(github, "first")  # learn the budget
    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(register, github, f"r{i}")
    assert emulator.rate_limits.over_primary == 0
    quota = github.quotas["installation 11"]
    assert quota.limit == 12 and quota.remaining is not None
    assert github.rate_limit_remaining is not None


async def test_no_answer_is_an_error_naming_the_endpoint(
    app_key: rsa.RSAPrivateKey, autojump_clock: trio.testing.MockClock
) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    auth = AppAuth(app_id=str(APP_ID), key=app_key)
    async with GitHubClient(
        "http://github.test", auth, transport=httpx.MockTransport(refuse)
    ) as github:
        with trio.fail_after(120), pytest.raises(GitHubError, match="no answer") as caught:
            await github.installation_id(APP)
    assert caught.value.path == "/repos/acme/app/installation"


class Observed(httpx.AsyncBaseTransport):
    """The in-process emulator behind a transport that records each request's timeout and how
    many are in flight; each request is held until two are, so a cap above two would show."""

    def __init__(self, emulator: Emulator) -> None:
        self._inner = httpx.ASGITransport(app=build_app(emulator))
        self._two = trio.Event()
        self.in_flight = self.peak = 0
        self.timeouts: list[object] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(request.extensions["timeout"])
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.in_flight >= 2:
                self._two.set()
            await self._two.wait()
            return await self._inner.handle_async_request(request)
        finally:
            self.in_flight -= 1


async def test_set_limits_applies_to_the_next_requests(emulator: Emulator) -> None:
    """A reload's request_timeout and max_concurrency reach a client that is already open."""
    token = emulator.add_personal_token(11)
    transport = Observed(emulator)
    async with GitHubClient(
        "http://github.test",
        TokenAuth(Secret(token)),
        timeout=30.0,
        max_concurrency=8,
        transport=transport,
    ) as github:
        github.set_limits(timeout=7.5, max_concurrency=2)
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(register, github, f"r{i}")
    assert transport.peak == 2
    seconds = {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}
    assert transport.timeouts == [seconds] * 6
