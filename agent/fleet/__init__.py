"""Several gantryd hosts on one Redis: what they share beyond the queue (docs/fleet.md).

With ``[queue] backend = "redis"`` the daemon opens a ``Fleet``: runner owners and job stakes
(``ownership``), one event stream per host so a job's webhooks reach the host that owns its
runner (``events``), and the check-run records with one host at a time reporting a job
(``reporting``). With SQLite none of this is imported or run: a single host pays nothing.

Layering: below the daemon, above the orchestrator and container packages whose seams it fills
(the runner store, the job-event channel, the reporter's store); its Redis connection is its own
(``_redis``), not the queue's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from agent.config import Config
from agent.container.store import RunnerStore
from agent.db import Database
from agent.fleet._redis import FleetRedis
from agent.fleet.events import FleetEvents as FleetEvents
from agent.fleet.ownership import OwnedRunnerStore as OwnedRunnerStore
from agent.fleet.ownership import Ownership as Ownership
from agent.fleet.reporting import FleetReports as FleetReports
from agent.queue.base import JobQueue


@dataclass
class Fleet:
    """This host's part in the fleet, for the daemon to wire in."""

    host: str
    ownership: Ownership
    events: FleetEvents
    reports: FleetReports

    def runner_store(self, db: Database) -> RunnerStore:
        return OwnedRunnerStore(db, ownership=self.ownership)


@asynccontextmanager
async def open_fleet(config: Config, host: str, queue: JobQueue) -> AsyncIterator[Fleet]:
    """Connect to the queue's Redis; closed when the block exits."""
    redis_ = FleetRedis(config.queue.redis_url, prefix=config.queue.redis_prefix)
    events = FleetEvents(redis_, host)
    try:
        yield Fleet(
            host=host,
            ownership=Ownership(redis_, host, staked=partial(events.catch_up, queue)),
            events=events,
            reports=FleetReports(redis_),
        )
    finally:
        await redis_.aclose()
