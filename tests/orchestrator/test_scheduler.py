"""agent/orchestrator/scheduler.py on a real SQLite queue, with a stand-in for the pool manager
that implements the scheduler's ``Pools`` seam (the Docker side is tests/container's)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from agent.config import PoolConfig
from agent.container.capacity import Placement
from agent.orchestrator.scheduler import MAX_PARKED, Scheduler, Wakeup
from agent.queue import open_queue
from agent.queue.base import JobQueue, JobSpec, JobState, Lease
from agent.reload import LiveConfig
from tests.orchestrator.conftest import make_config

_ids = itertools.count(1)


@dataclass
class StandInPools:
    """Free slots per pool as set by the test; repositories listed in ``full`` get NO_ROOM."""

    free: dict[str, int]
    full: set[str] = field(default_factory=set)
    placed: list[Lease] = field(default_factory=list)
    offers: list[Lease] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    asked: int = 0  # free_slots calls: a claim is on its way

    def free_slots(self, pool: PoolConfig) -> int:
        self.asked += 1
        return self.free.get(pool.name, 0)

    def place(self, lease: Lease) -> Placement:
        self.offers.append(lease)
        if lease.job.spec.repository in self.full:
            return Placement.NO_ROOM
        self.placed.append(lease)
        self.free[lease.job.spec.pool] -= 1  # as a started runner takes a slot
        self.changed.set()
        self.changed = trio.Event()
        return Placement.STARTED

    async def wait_placed(self) -> None:
        await self.changed.wait()

    def offered(self) -> list[int]:
        return [lease.job_id for lease in self.offers]


@dataclass
class Setup:
    queue: JobQueue
    live: LiveConfig
    pools: StandInPools
    now: list[float]

    def scheduler(self) -> Scheduler:
        return Scheduler(
            live=self.live,
            queue=self.queue,
            pools=self.pools,
            wakeup=Wakeup(),
            clock=lambda: self.now[0],
        )

    async def enqueue(self, pool: str, repository: str = "octo-org/app", priority: int = 0) -> int:
        job_id = next(_ids)
        spec = JobSpec(
            job_id=job_id,
            run_id=1,
            run_attempt=1,
            repository=repository,
            installation_id=None,
            labels=("self-hosted",),
            pool=pool,
            priority=priority,
        )
        await self.queue.enqueue(spec)
        return job_id

    async def state(self, job_id: int) -> JobState:
        entry = await self.queue.get(job_id)
        assert entry is not None
        return entry.state


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    config = make_config(tmp_path)
    config = dataclasses.replace(
        config, scheduler=dataclasses.replace(config.scheduler, concurrency=3)
    )
    async with open_queue(config) as queue:
        pools = StandInPools(free={"default": 0, "gpu": 0})
        yield Setup(queue, LiveConfig(config), pools, [0.0])


async def test_pools_claim_in_order_within_their_free_slots_and_concurrency(
    setup: Setup,
) -> None:
    low = await setup.enqueue("default")
    high = await setup.enqueue("default", priority=9)
    gpu = [await setup.enqueue("gpu") for _ in range(5)]
    setup.pools.free.update(default=1, gpu=10)
    scheduler = setup.scheduler()
    assert await scheduler.dispatch_once() == 4  # default: 1 slot; gpu: concurrency 3
    assert [lease.job_id for lease in setup.pools.placed] == [high, *gpu[:3]]
    assert await setup.state(low) is JobState.QUEUED
    assert await scheduler.dispatch_once() == 2  # no slot left in default
    assert [lease.job_id for lease in setup.pools.placed][4:] == gpu[3:]


async def test_a_job_over_its_repository_cap_is_parked_then_placed_first(setup: Setup) -> None:
    setup.pools.free["default"] = 2
    setup.pools.full.add("octo-org/app")
    capped = await setup.enqueue("default", priority=5)
    other = await setup.enqueue("default", repository="octo-org/lib")
    scheduler = setup.scheduler()
    assert await scheduler.dispatch_once() == 2
    assert [lease.job_id for lease in setup.pools.placed] == [other]
    assert await setup.state(capped) is JobState.CLAIMED  # held, not given back
    later = await setup.enqueue("default", repository="octo-org/lib")
    setup.pools.full.clear()  # a runner of octo-org/app went away: one slot more
    setup.pools.free["default"] += 1
    setup.pools.offers.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(10):
            while len(setup.pools.placed) < 3:
                await setup.pools.wait_placed()
        nursery.cancel_scope.cancel()
    assert setup.pools.offered() == [capped, later]  # the parked job is offered first
    assert [lease.job_id for lease in setup.pools.placed] == [other, capped, later]


async def test_parked_leases_are_kept_alive_and_let_go_when_github_takes_the_job(
    setup: Setup,
) -> None:
    setup.pools.free["default"] = 2
    setup.pools.full.add("octo-org/app")
    kept, taken = await setup.enqueue("default"), await setup.enqueue("default")
    scheduler = setup.scheduler()
    await scheduler.dispatch_once()
    first = {lease.job_id: lease for lease in setup.pools.offers}
    setup.now[0] = first[kept].expires_at  # the lease nearly spent: the next pass renews it
    scheduler.job_taken(taken)
    setup.pools.offers.clear()
    await scheduler.serve_parked()
    assert setup.pools.offered() == [kept]  # the taken job is no longer offered
    renewed = setup.pools.offers[0]
    assert renewed.expires_at > first[kept].expires_at
    assert await setup.state(kept) is JobState.CLAIMED


async def test_beyond_max_parked_a_claimed_job_goes_back_to_the_queue(setup: Setup) -> None:
    setup.pools.free["default"] = MAX_PARKED + 1
    setup.pools.full.add("octo-org/app")
    jobs = [await setup.enqueue("default") for _ in range(MAX_PARKED + 1)]
    live = setup.live.current
    setup.live.current = dataclasses.replace(
        live, scheduler=dataclasses.replace(live.scheduler, concurrency=MAX_PARKED + 1)
    )
    scheduler = setup.scheduler()
    assert await scheduler.dispatch_once() == MAX_PARKED + 1
    states = [await setup.state(job_id) for job_id in jobs]
    assert states == [JobState.CLAIMED] * MAX_PARKED + [JobState.QUEUED]


async def test_a_paused_scheduler_claims_nothing_but_still_places_parked_jobs(
    setup: Setup,
) -> None:
    setup.pools.free["default"] = 1
    setup.pools.full.add("octo-org/app")
    parked = await setup.enqueue("default")
    scheduler = setup.scheduler()
    await scheduler.dispatch_once()
    fresh = await setup.enqueue("default", repository="octo-org/lib")
    scheduler.paused = True  # drain
    setup.pools.full.clear()
    setup.pools.asked = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(10):
            while not setup.pools.placed:
                await setup.pools.wait_placed()
        assert setup.pools.asked == 0  # the pass went on without a claim
        nursery.cancel_scope.cancel()
    assert [lease.job_id for lease in setup.pools.placed] == [parked]
    assert await setup.state(fresh) is JobState.QUEUED
