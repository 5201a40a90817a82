"""RateLimitGate and ContentPacer on their own (the client tests use them against GitHub)."""

from __future__ import annotations

import trio
import trio.testing

from agent.github.ratelimit import ContentPacer, RateLimitGate


class WallClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def headers(remaining: int, reset: int, limit: int = 10) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
    }


async def test_spent_budget_closes_the_gate_until_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = WallClock()
    gate = RateLimitGate(clock=wall)
    async with gate.slot():
        gate.observe(headers(0, int(wall.now) + 30))
    assert gate.quota.remaining == 0
    started = trio.current_time()

    async def advance_wall() -> None:
        await trio.sleep(31)
        wall.now += 31

    async with trio.open_nursery() as nursery:
        nursery.start_soon(advance_wall)
        async with gate.slot():
            pass
    assert trio.current_time() - started >= 31  # held until reset (+1 s slack), not before


async def test_answers_out_of_order_never_raise_the_budget() -> None:
    gate = RateLimitGate(clock=WallClock())
    async with gate.slot():
        gate.observe(headers(4, 2_000_000))
    async with gate.slot():
        gate.observe(headers(6, 2_000_000))  # an older answer arriving late
    assert gate.quota.remaining == 3  # 4, less this request counted locally, not 6


def test_refusals_and_what_they_mean() -> None:
    wall = WallClock()
    gate = RateLimitGate(clock=wall)
    assert gate.refused(403, {"retry-after": "7"}) == 7
    assert gate.refused(429, {}) == 60  # secondary, no hint: at least a minute (docs/github.md §7)
    assert gate.refused(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1000010"}) == 11
    assert gate.refused(403, {}) is None  # a permission refusal, not a rate limit
    assert gate.refused(500, {"retry-after": "1"}) is None


async def test_pacer_keeps_within_the_per_minute_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = ContentPacer(per_minute=3, per_hour=100)
    sent = []
    for _ in range(7):
        await pacer.wait()
        sent.append(trio.current_time())
    assert sent[3] - sent[0] >= 60 and sent[6] - sent[3] >= 60
    assert all(sent[i + 3] - sent[i] >= 60 for i in range(len(sent) - 3))
