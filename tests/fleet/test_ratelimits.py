"""The rate-limit budget of one credential shared by two hosts through a real redis-server."""

from __future__ import annotations

import pytest

from agent.fleet.connection import FleetRedis
from agent.fleet.ratelimits import sync_rate_limits
from agent.github.ratelimit import Quota, RateLimitGate
from tests.queue.queue_support import FakeClock

pytestmark = pytest.mark.redis

RESET = 1_800_003_600


def headers(remaining: int, reset: int = RESET) -> dict[str, str]:
    return {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
    }


async def test_the_lowest_figure_of_a_window_wins_on_every_host(fleet: FleetRedis) -> None:
    clock = FakeClock()
    a, b = RateLimitGate(clock=clock), RateLimitGate(clock=clock)
    async with a.slot():
        a.observe(headers(4000))
    async with b.slot():
        b.observe(headers(1200))
    await sync_rate_limits(fleet, {"installation 7": a})
    await sync_rate_limits(fleet, {"installation 7": b})
    await sync_rate_limits(fleet, {"installation 7": a})
    assert a.quota == b.quota == Quota(5000, 1200, float(RESET))
    async with a.slot():  # a new window: its figures replace the old window's
        a.observe(headers(4990, RESET + 3600))
    await sync_rate_limits(fleet, {"installation 7": a})
    await sync_rate_limits(fleet, {"installation 7": b})
    assert b.quota == Quota(5000, 4990, float(RESET + 3600))


async def test_a_spent_budget_or_a_hold_on_one_host_stops_the_other(fleet: FleetRedis) -> None:
    clock = FakeClock()
    a, b = RateLimitGate(clock=clock), RateLimitGate(clock=clock)
    async with a.slot():
        a.observe(headers(0, int(clock.now) + 600))
    await sync_rate_limits(fleet, {"token abc": a})
    await sync_rate_limits(fleet, {"token abc": b})
    assert b.quota.remaining == 0  # b's next slot() waits for the reset, as a's does
    other = RateLimitGate(clock=clock)
    assert other.refused(429, {"retry-after": "120"}) == 120.0
    await sync_rate_limits(fleet, {"app 1": other})
    fresh = RateLimitGate(clock=clock)
    await sync_rate_limits(fleet, {"app 1": fresh})
    assert fresh.hold_until == clock.now + 120
    untouched = RateLimitGate(clock=clock)
    await sync_rate_limits(fleet, {"app 2": untouched})  # another credential: its own budget
    assert untouched.hold_until == 0 and untouched.quota.remaining is None
