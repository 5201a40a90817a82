"""Rate-limit headers, primary and secondary refusals (emulator/ratelimit.py; docs/github.md §7)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import trio
import trio.testing

from agent.emulator import Emulator
from agent.emulator.asgi import Message, Receive, Scope, Send
from agent.emulator.ratelimit import RateLimitPolicy, RateLimits

from .conftest import Clock

RUNNERS = "/repos/acme/app/actions/runners"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_headers_on_every_answer_and_403_when_spent(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str], clock: Clock
) -> None:
    emulator.rate_limits.policy = RateLimitPolicy(limit=3, window=60)
    token = token_for(11)
    seen = []
    for _ in range(3):
        response = await http.get(RUNNERS, headers=auth(token))
        assert response.status_code == 200
        seen.append(int(response.headers["x-ratelimit-remaining"]))
    assert seen == [2, 1, 0]
    assert response.headers["x-ratelimit-limit"] == "3"
    assert response.headers["x-ratelimit-used"] == "3"
    assert response.headers["x-ratelimit-resource"] == "core"
    reset = int(response.headers["x-ratelimit-reset"])
    assert clock.now < reset <= clock.now + 61
    refused = await http.get(RUNNERS, headers=auth(token))
    assert refused.status_code == 403
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert "API rate limit exceeded" in refused.json()["message"]
    assert emulator.rate_limits.over_primary == 1
    # A refreshed token of the same installation spends the same budget (§7).
    assert (await http.get(RUNNERS, headers=auth(token_for(11)))).status_code == 403
    # Another installation has its own.
    other = await http.get("/repos/other/tool/actions/runners", headers=auth(token_for(12)))
    assert other.status_code == 200
    clock.now = reset  # the window is over
    assert (await http.get(RUNNERS, headers=auth(token))).status_code == 200


async def test_bursts_answer_429_with_retry_after(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    emulator.rate_limits.policy = RateLimitPolicy(burst_rate=1.0, burst_seconds=5)
    token = token_for(11)
    for _ in range(2):
        response = await http.get(RUNNERS, headers=auth(token))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "5"
        assert "secondary rate limit" in response.json()["message"]
    assert emulator.rate_limits.burst_arrivals == [2]


async def test_concurrency_above_the_secondary_limit_is_refused(clock: Clock) -> None:
    """Requests of one credential in flight beyond max_concurrent get 403 + retry-after."""
    release = trio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = RateLimits(clock=clock, key_of=lambda credential: credential)
    limits.policy = RateLimitPolicy(max_concurrent=2)
    app = limits.middleware(slow_app)  # type: ignore[arg-type]
    answers: list[tuple[int, dict[bytes, bytes]]] = []

    async def request() -> None:
        scope = {"type": "http", "path": "/repos/a/b", "headers": [(b"authorization", b"Bearer t")]}

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answers.append((message["status"], dict(message["headers"])))

        await app(scope, receive, send)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(request)
        await trio.testing.wait_all_tasks_blocked()
        assert [status for status, _ in answers] == [403]  # the third, while two are in flight
        assert answers[0][1][b"retry-after"] == b"60"
        release.set()
    assert sorted(status for status, _ in answers) == [200, 200, 403]
    assert limits.over_concurrency == 1


async def test_private_paths_are_not_limited(http: httpx.AsyncClient, emulator: Emulator) -> None:
    emulator.rate_limits.policy = RateLimitPolicy(limit=1)
    for _ in range(3):
        response = await http.get("/_emulator/deliveries")
        assert response.status_code == 200
        assert "x-ratelimit-remaining" not in response.headers
