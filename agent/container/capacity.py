"""How much work this host can take: pure arithmetic over the live runners, no Docker, no clock.

Three caps hold at once (docs/design.md §6): ``scheduler.max_runners`` for all pools together,
each pool's ``max_runners``, and the host memory budget (the memory limits of live runners together
at most ``scheduler.host_memory_share`` of the host's memory). A pool's ``max_concurrent`` caps
the live runners serving one repository; a claimed job over it waits (the scheduler holds it),
so it never takes room from other repositories' jobs.

The pool manager answers the scheduler with these (``free_slots``) and checks ``may_start``
before it creates a runner; ``Placement`` is what became of a claimed job it was offered.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.config import PoolConfig, SchedulerConfig


class Counted(Protocol):
    """What capacity reads of a live runner (``agent.container.lifecycle.Runner`` has it)."""

    @property
    def pool(self) -> str: ...

    @property
    def repository(self) -> str | None: ...

    @property
    def memory(self) -> int: ...

    @property
    def warm(self) -> bool: ...


@dataclass(frozen=True, kw_only=True)
class HostLimits:
    """The caps shared by every pool of this host."""

    max_runners: int  # live runners of all pools together
    memory_budget: int | None  # bytes their memory limits may add up to; None: no budget


class Placement(enum.Enum):
    """What the pool manager did with a claimed job it was offered."""

    WARM = "warm"  # handed to a warm runner that was already waiting
    STARTED = "started"  # a new runner is being created for it
    NO_ROOM = "no_room"  # nothing may start for it now: the caller keeps the lease
    DROPPED = "dropped"  # not to be served here (its pool is gone, or it already runs)


def host_memory() -> int:
    """This machine's physical memory in bytes, 0 when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def host_limits(scheduler: SchedulerConfig, memory: int) -> HostLimits:
    """The shared caps from the ``[scheduler]`` table and the host's memory (0: unknown, so
    no memory budget)."""
    budget = int(memory * scheduler.host_memory_share) if memory else None
    return HostLimits(max_runners=scheduler.max_runners, memory_budget=budget)


def memory_room(pool: PoolConfig, live: Sequence[Counted], limits: HostLimits) -> int:
    """How many more runners of this pool the memory budget allows (may be negative)."""
    if limits.memory_budget is None:
        return pool.max_runners
    return (limits.memory_budget - sum(r.memory for r in live)) // pool.job_memory


def free_slots(pool: PoolConfig, live: Sequence[Counted], limits: HostLimits) -> int:
    """How many jobs of this pool may be claimed now: room for new runners under the global,
    pool and memory caps, plus warm runners waiting to take a job without a new container.
    Repository caps are not counted: a job over one waits without taking room."""
    in_pool = [r for r in live if r.pool == pool.name]
    room = min(
        pool.max_runners - len(in_pool),
        limits.max_runners - len(live),
        memory_room(pool, live, limits),
    )
    return max(0, room) + sum(1 for r in in_pool if r.warm)


def may_start(
    pool: PoolConfig, repository: str | None, live: Sequence[Counted], limits: HostLimits
) -> bool:
    """Whether a new runner of this pool, serving ``repository`` (None: not yet known, as for
    a warm runner of organization scope), fits under every cap."""
    in_pool = [r for r in live if r.pool == pool.name]
    if (
        len(live) >= limits.max_runners
        or len(in_pool) >= pool.max_runners
        or memory_room(pool, live, limits) < 1
    ):
        return False
    if pool.max_concurrent and repository is not None:
        return sum(1 for r in in_pool if r.repository == repository) < pool.max_concurrent
    return True
