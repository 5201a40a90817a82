"""agent/container/capacity.py: the caps as arithmetic over plain data, no Docker."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import PoolConfig, SchedulerConfig
from agent.container.capacity import free_slots, host_limits, may_start, memory_room

MIB = 1024**2
POOL = PoolConfig(name="p", labels=("self-hosted",), max_runners=4, memory=256 * MIB)
OTHER = PoolConfig(name="q", labels=("gpu",), max_runners=4, memory=256 * MIB)
NO_BUDGET = host_limits(SchedulerConfig(max_runners=6), 0)


@dataclass(frozen=True)
class Live:
    pool: str = "p"
    repository: str | None = "o/a"
    memory: int = 256 * MIB
    warm: bool = False


def test_the_tightest_of_pool_global_and_memory_caps_wins() -> None:
    assert free_slots(POOL, [], NO_BUDGET) == 4  # the pool's max_runners
    assert free_slots(POOL, [Live(), Live()], NO_BUDGET) == 2
    others = [Live(pool="q")] * 4
    assert free_slots(POOL, others, NO_BUDGET) == 2  # scheduler.max_runners = 6 for all
    budget = host_limits(SchedulerConfig(max_runners=6, host_memory_share=0.5), 1024 * MIB)
    assert budget.memory_budget == 512 * MIB
    assert memory_room(POOL, [Live(pool="q")], budget) == 1
    assert free_slots(POOL, [Live(pool="q")], budget) == 1


def test_warm_runners_are_slots_even_when_no_runner_may_start() -> None:
    full = [Live(warm=True), Live(warm=True), Live(), Live()]
    assert free_slots(POOL, full, NO_BUDGET) == 2  # no room, but two runners wait for jobs
    assert not may_start(POOL, "o/a", full, NO_BUDGET)
    assert free_slots(OTHER, full, NO_BUDGET) == 2  # global room; the warm ones are POOL's


def test_an_over_committed_host_never_gives_negative_slots() -> None:
    budget = host_limits(SchedulerConfig(max_runners=6, host_memory_share=1.0), 512 * MIB)
    live = [Live(pool="q", memory=1024 * MIB)]
    assert memory_room(POOL, live, budget) < 0
    assert free_slots(POOL, live, budget) == 0
    assert not may_start(POOL, None, live, budget)


def test_max_concurrent_caps_one_repository_only() -> None:
    capped = PoolConfig(name="p", labels=("self-hosted",), max_runners=4, max_concurrent=2)
    two_of_a = [Live(), Live()]
    assert not may_start(capped, "o/a", two_of_a, NO_BUDGET)
    assert may_start(capped, "o/b", two_of_a, NO_BUDGET)
    assert may_start(capped, None, two_of_a, NO_BUDGET)  # repository not known yet
    assert free_slots(capped, two_of_a, NO_BUDGET) == 2  # repository caps take no slots
    elsewhere = [Live(pool="q"), Live(pool="q")]
    assert may_start(capped, "o/a", elsewhere, NO_BUDGET)  # other pools' runners do not count
    assert may_start(POOL, "o/a", [Live()] * 3, NO_BUDGET)  # no max_concurrent: no cap
