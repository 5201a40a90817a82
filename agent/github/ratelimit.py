"""Client-side rate-limit bookkeeping: never send a request GitHub is bound to refuse.

docs/github.md §7. The primary limit is a budget per hour (``x-ratelimit-remaining`` until
``x-ratelimit-reset``); once it is spent GitHub answers 403/429 and "continuing to make requests
while you are rate limited may result in the banning of your integration". So `RateLimitGate`
keeps the budget as GitHub last reported it, minus the requests in flight since, and holds every
new request until the reset once nothing is left. A secondary-limit refusal (``retry-after``, or
a 403/429 without it) closes the gate for everybody, not only for the request that hit it.

`ContentPacer` spaces content-creating requests (check runs, commit statuses: POSTs) within
GitHub's "≤ 80 content-generating requests per minute and ≤ 500 per hour" (§7, secondary).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

SECONDARY_DEFAULT_WAIT = 60.0  # §7: no retry-after and quota left: "wait at least one minute"
RESET_SLACK = 1.0  # seconds past x-ratelimit-reset (whole seconds) before trying again


@dataclass(frozen=True)
class Quota:
    """The primary budget as GitHub last reported it (for metrics)."""

    limit: int | None
    remaining: int | None
    reset: float | None  # unix seconds


class RateLimitGate:
    """Shared by every request of one client; ``clock`` is wall time (reset is an epoch)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._limit: int | None = None
        self._remaining: int | None = None  # GitHub's figure minus our requests since
        self._reset: float | None = None
        self._hold_until = 0.0
        self._in_flight = 0

    @property
    def quota(self) -> Quota:
        return Quota(self._limit, self._remaining, self._reset)

    def _wait_needed(self) -> float:
        now = self._clock()
        wait = self._hold_until - now
        if self._remaining is not None and self._remaining <= 0 and self._reset is not None:
            if self._reset + RESET_SLACK > now:
                wait = max(wait, self._reset + RESET_SLACK - now)
            else:  # the window has passed: GitHub's next answer tells the new budget
                self._remaining = None
        return wait

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait until a request may leave, and count it against the budget while in flight."""
        # A deadline, not an event: the gate reopens by the clock, and a later refusal may
        # push it further, hence the loop.
        while (wait := self._wait_needed()) > 0:  # noqa: ASYNC110
            await trio.sleep(wait)
        if self._remaining is not None:
            self._remaining -= 1
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take GitHub's figures from a response, less the requests still in flight.

        Called inside the request's ``slot``, so ``_in_flight`` includes this request; those
        others may or may not have been counted by GitHub yet: assume they were not. Answers
        can arrive out of order, so within one window the figure only ever goes down.
        """
        remaining = _int(headers.get("x-ratelimit-remaining"))
        if remaining is None:
            return
        self._limit = _int(headers.get("x-ratelimit-limit"))
        raw_reset = _int(headers.get("x-ratelimit-reset"))
        reset = float(raw_reset) if raw_reset is not None else None
        estimate = remaining - (self._in_flight - 1)
        if self._remaining is not None and reset == self._reset:
            estimate = min(estimate, self._remaining)
        self._reset = reset
        self._remaining = estimate

    @property
    def hold_until(self) -> float:
        """Wall time until which a secondary-limit refusal holds every request (0: none)."""
        return self._hold_until

    def merge(
        self, limit: int | None, remaining: int | None, reset: float | None, hold_until: float
    ) -> None:
        """Take what other hosts spending the same credential last saw (``agent.fleet``):
        within one window the lower remaining, a later window's figures outright, the later
        hold. Never raises the remaining budget within a window."""
        self._hold_until = max(self._hold_until, hold_until)
        if remaining is None or reset is None:
            return
        if self._reset is None or self._remaining is None or reset > self._reset:
            self._limit, self._remaining, self._reset = limit, remaining, reset
        elif reset == self._reset:
            self._remaining = min(self._remaining, remaining)

    def refused(self, status: int, headers: Mapping[str, str]) -> float | None:
        """If the answer is a rate-limit refusal, close the gate and return the wait, else None.

        §7 order: ``retry-after`` seconds; else, with no quota left, until ``x-ratelimit-reset``;
        else (a secondary limit without retry-after) at least a minute. A 403 carrying none of
        these is a permission refusal, not a rate limit.
        """
        if status not in (403, 429):
            return None
        now = self._clock()
        retry_after = _int(headers.get("retry-after"))
        if retry_after is not None:
            wait = float(retry_after)
        elif headers.get("x-ratelimit-remaining") == "0":
            reset = _int(headers.get("x-ratelimit-reset"))
            wait = reset + RESET_SLACK - now if reset is not None else SECONDARY_DEFAULT_WAIT
        elif status == 429:
            wait = SECONDARY_DEFAULT_WAIT
        else:
            return None
        wait = max(wait, 0.0)
        self._hold_until = max(self._hold_until, now + wait)
        return wait


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class ContentPacer:
    """Sliding-window pacing of content-creating requests (§7: 80 per minute, 500 per hour)."""

    def __init__(
        self,
        *,
        per_minute: int = 80,
        per_hour: int = 500,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._windows = ((60.0, per_minute), (3600.0, per_hour))
        self._clock = clock
        self._sent: deque[float] = deque()
        self._lock = trio.Lock()

    async def wait(self) -> None:
        """Return once one more content-creating request stays within both windows."""
        async with self._lock:
            while True:
                now = self._clock()
                while self._sent and self._sent[0] <= now - 3600.0:
                    self._sent.popleft()
                delay = 0.0
                for span, allowed in self._windows:
                    recent = [t for t in self._sent if t > now - span]
                    if len(recent) >= allowed:
                        delay = max(delay, recent[-allowed] + span - now)
                if delay <= 0:
                    self._sent.append(now)
                    return
                await trio.sleep(delay)
