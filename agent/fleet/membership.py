"""This host's part in a fleet sharing one Redis, opened by the daemon with the Redis backend.

Imported only then (it loads redis-py through the event streams): leases for the fleet-wide
chores, the host records, and the routing of job events and check-run reports between hosts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from agent.config import Config
from agent.container.store import RunnerStore
from agent.db import Database
from agent.fleet.events import FleetEvents
from agent.fleet.hosts import Hosts
from agent.fleet.leases import RECONCILER, REGISTRATION_SWEEP, Lease
from agent.fleet.ownership import OwnedRunnerStore, Ownership
from agent.fleet.reporting import FleetReports
from agent.fleet.stream_redis import StreamRedis
from agent.queue.base import JobQueue
from agent.storage.redis_handle import FleetRedis, RedisUnavailable, open_fleet_redis


@dataclass
class Fleet:
    """What the daemon wires in: the chores' leases and host record (``redis``), runner owners,
    the host's event stream and the shared check-run records (``streams``)."""

    host: str
    redis: FleetRedis
    hosts: Hosts
    reconciler: Lease
    sweep: Lease
    ownership: Ownership
    events: FleetEvents
    reports: FleetReports

    def runner_store(self, db: Database) -> RunnerStore:
        """The local runner store, its writes mirrored as runner owners in Redis."""
        return OwnedRunnerStore(db, ownership=self.ownership)

    async def sweep_turn(self) -> Collection[str] | None:
        """The dead hosts' instances if this host holds the sweep lease now, else None."""
        if not self.sweep.held:
            return None
        try:
            return await self.hosts.dead_instances()
        except RedisUnavailable:
            return None


@asynccontextmanager
async def open_fleet(config: Config, host: str, queue: JobQueue) -> AsyncIterator[Fleet]:
    """Connect to the queue's Redis (``[queue] redis_*``); closed when the block exits."""
    streams = StreamRedis(
        config.queue.redis_url, prefix=config.queue.redis_prefix, queue=config.queue
    )
    events = FleetEvents(streams, host)
    try:
        async with open_fleet_redis(config.queue) as redis:
            yield Fleet(
                host=host,
                redis=redis,
                hosts=Hosts(redis, host=host),
                reconciler=Lease(redis, RECONCILER, host=host),
                sweep=Lease(redis, REGISTRATION_SWEEP, host=host),
                ownership=Ownership(streams, host, staked=partial(events.catch_up, queue)),
                events=events,
                reports=FleetReports(streams),
            )
    finally:
        await streams.aclose()
