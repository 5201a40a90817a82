"""GitHub's REST rate limits (docs/github.md §7), an ASGI layer in front of the emulator's routes.

Every REST answer carries ``x-ratelimit-limit``, ``-remaining``, ``-used``, ``-reset`` (epoch
seconds) and ``-resource``. Each credential has a budget of ``limit`` requests per ``window``
(GitHub: 5,000 per hour for a token or an installation); the App's JWT requests share one budget
and an installation's tokens share the installation's (`Emulator.budget_key`). Once it is spent
the answer is 403 (or 429) with ``x-ratelimit-remaining: 0`` until the reset. Secondary limits:
more than ``max_concurrent`` requests of one credential in flight at once (GitHub: 100) is
refused with ``retry-after``; and, as a fault, ``burst_rate`` opens a window of
``burst_seconds`` in which every request of that credential gets 429 with ``retry-after``.

The counters say whether a client behaved: ``over_primary`` and ``over_concurrency`` count
requests sent although the headers already said no; ``burst_arrivals`` counts, per injected
burst, the requests that arrived inside it (a client that honours ``retry-after`` sends at most
the ones it already had in flight). The emulator's private paths (``/_runner``, ``/_emulator``)
are not GitHub's API and are not limited.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.emulator.asgi import App, Message, Receive, Scope, Send

_DOCS = "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api"
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
CONCURRENCY_RETRY_AFTER = 60  # seconds; §7: "wait at least one minute"
PRIVATE_PREFIXES = ("/_runner", "/_emulator", "/_actions")  # /_actions: not the REST API


@dataclass(frozen=True, kw_only=True)
class RateLimitPolicy:
    limit: int = 5000  # requests per credential per window
    window: float = 3600.0  # seconds
    max_concurrent: int = 100
    burst_rate: float = 0.0  # probability that a request opens a 429 burst
    burst_seconds: int = 1  # retry-after of a burst
    primary_status: int = 403  # GitHub answers 403 or 429 (§7)

    def __post_init__(self) -> None:
        if not 0.0 <= self.burst_rate <= 1.0:
            raise ValueError(f"burst_rate must be within 0..1, got {self.burst_rate!r}")
        if self.primary_status not in (403, 429):
            raise ValueError("primary_status must be 403 or 429")


@dataclass
class _Budget:
    reset: float  # epoch seconds (whole) when the window ends
    used: int = 0
    in_flight: int = 0
    burst_until: float = 0.0


@dataclass
class RateLimits:
    """The budgets and counters; ``policy`` may be replaced at any time (tests, control API)."""

    clock: Callable[[], float]
    key_of: Callable[[str], str]  # credential -> budget key
    rng: random.Random = field(default_factory=random.Random)
    policy: RateLimitPolicy = field(default_factory=RateLimitPolicy)
    over_primary: int = 0
    over_concurrency: int = 0
    burst_arrivals: list[int] = field(default_factory=list)
    _budgets: dict[str, _Budget] = field(default_factory=dict)
    _bursts: dict[str, int] = field(default_factory=dict)  # key -> index in burst_arrivals

    def _budget(self, key: str, now: float) -> _Budget:
        budget = self._budgets.get(key)
        if budget is None or budget.reset <= now:
            budget = _Budget(reset=float(math.ceil(now + self.policy.window)))
            self._budgets[key] = budget
        return budget

    def headers(self, budget: _Budget) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.policy.limit),
            "x-ratelimit-remaining": str(max(0, self.policy.limit - budget.used)),
            "x-ratelimit-used": str(budget.used),
            "x-ratelimit-reset": str(int(budget.reset)),
            "x-ratelimit-resource": "core",
        }

    def middleware(self, app: App) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """Wrap the emulator's ASGI app: refuse over-limit requests, add headers to the rest."""

        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"].startswith(PRIVATE_PREFIXES):
                await app(scope, receive, send)
                return
            key = self.key_of(_credential(scope))
            now = self.clock()
            budget = self._budget(key, now)
            refusal = self._refusal(key, budget, now)
            if refusal is not None:
                status, message, extra = refusal
                headers = {**self.headers(budget), **extra}
                await _send_json(
                    send, status, {"message": message, "documentation_url": _DOCS}, headers
                )
                return
            budget.used += 1
            budget.in_flight += 1
            added = self.headers(budget)

            async def with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [
                        *message.get("headers", []),
                        *((k.encode(), v.encode()) for k, v in added.items()),
                    ]
                await send(message)

            try:
                await app(scope, receive, with_headers)
            finally:
                budget.in_flight -= 1

        return limited

    def _refusal(
        self, key: str, budget: _Budget, now: float
    ) -> tuple[int, str, dict[str, str]] | None:
        policy = self.policy
        if budget.used >= policy.limit:
            self.over_primary += 1
            return policy.primary_status, f"API rate limit exceeded for {key}.", {}
        if now < budget.burst_until:
            self.burst_arrivals[self._bursts[key]] += 1
            wait = math.ceil(budget.burst_until - now)
            return 429, SECONDARY_MESSAGE, {"retry-after": str(wait)}
        if budget.in_flight >= policy.max_concurrent:
            self.over_concurrency += 1
            return 403, SECONDARY_MESSAGE, {"retry-after": str(CONCURRENCY_RETRY_AFTER)}
        if policy.burst_rate and self.rng.random() < policy.burst_rate:
            self.open_burst(key, policy.burst_seconds)
            self.burst_arrivals[-1] += 1
            return 429, SECONDARY_MESSAGE, {"retry-after": str(policy.burst_seconds)}
        return None

    def open_burst(self, key: str, seconds: int) -> None:
        """Refuse every request of ``key`` for ``seconds`` with 429 + retry-after, from now."""
        budget = self._budget(key, self.clock())
        budget.burst_until = self.clock() + seconds
        self._bursts[key] = len(self.burst_arrivals)
        self.burst_arrivals.append(0)


def _credential(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            return str(value.decode("latin-1").partition(" ")[2].strip())
    return ""


async def _send_json(send: Send, status: int, body: object, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw += [(b"content-type", b"application/json; charset=utf-8")]
    raw += [(b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
