"""The rate-limit budget of one credential shared by two hosts through a real redis-server."""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, serve_emulator
from agent.emulator.ratelimit import RateLimitPolicy
from agent.fleet.handle import FleetRedis
from agent.fleet.ratelimits import sync_rate_limits
from agent.github.auth import Secret, TokenAuth
from agent.github.client import GitHubClient, RunnerTarget
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


async def test_two_hosts_clients_with_one_token_share_its_budget(
    fleet: FleetRedis, nursery: trio.Nursery
) -> None:
    """Against the emulator's budget of 4 requests: host a spends them all; after one exchange
    host b's client holds its first request instead of sending one GitHub would refuse."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emulator = Emulator(
        app_id=1, app_public_key=key.public_key(), installations={11: ["acme/app"]}, seed=1
    )
    emulator.rate_limits.policy = RateLimitPolicy(limit=4, window=3600)
    url = await nursery.start(serve_emulator, emulator)
    token = Secret(emulator.add_personal_token(11))
    target = RunnerTarget(repository="acme/app")
    async with GitHubClient(url, TokenAuth(token)) as a, GitHubClient(url, TokenAuth(token)) as b:
        for _ in range(4):
            await a.list_runners(target, installation_id=None)
        (credential,) = a.shared_gates  # "token <digest>", never the token
        assert credential.startswith("token ") and token.reveal() not in credential
        await sync_rate_limits(fleet, a.shared_gates)
        await sync_rate_limits(fleet, b.shared_gates)  # b has sent nothing yet
        assert b.quotas["token"].remaining == 0
        with trio.move_on_after(1.0) as held:  # b's gate waits for the reset, an hour away
            await b.list_runners(target, installation_id=None)
        assert held.cancelled_caught
        assert emulator.rate_limits.over_primary == 0  # nothing was sent to be refused


async def test_a_gate_that_knows_nothing_yet_changes_nothing(fleet: FleetRedis) -> None:
    clock = FakeClock()
    empty, known = RateLimitGate(clock=clock), RateLimitGate(clock=clock)
    await sync_rate_limits(fleet, {"token t": empty})  # no quota, no hold: stored as unknown
    async with known.slot():
        known.observe(headers(321))
    await sync_rate_limits(fleet, {"token t": known})
    await sync_rate_limits(fleet, {"token t": empty})
    assert empty.quota == known.quota == Quota(5000, 321, float(RESET))
    assert empty.hold_until == 0
