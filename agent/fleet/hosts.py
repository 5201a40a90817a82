"""Host heartbeats: what every host of the fleet can see of the others.

Every ``HEARTBEAT_INTERVAL`` each host writes its record (``HostRecord``: pools, runners in use
of its cap, drain state, version, the time) to ``{prefix}:host:<instance>`` and its time to the
``{prefix}:hosts`` sorted set, in one round trip. ``gantryd status --fleet`` reads them all.

A host whose last heartbeat is older than ``GONE_AFTER`` is *gone*: shown so, and its leases are
released by whichever host notices first, so its chores move on without waiting for the lease
to expire. A host gone for ``DEAD_AFTER`` is *dead*: the registration sweep may then delete its
offline, idle runner registrations (``dead_instances``). Dead is judged far later than gone on
purpose: a host cut off from Redis may still be starting runners that are offline at GitHub
until they connect, and ten minutes without a heartbeat is longer than GitHub keeps such a JIT
runner anyway (docs/github.md §3.2). Records of hosts gone for ``FORGET_AFTER`` are dropped.

Times are wall-clock seconds (``clock``): they are compared between hosts, so the hosts'
clocks must agree to within a fraction of ``GONE_AFTER`` (NTP does that).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import trio

from agent.fleet.handle import FleetRedis, RedisUnavailable
from agent.fleet.leases import LEASE_TTL, release_host

if TYPE_CHECKING:
    import redis
    import redis.client

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
# Longer than a lease's ttl plus one heartbeat interval (and some slack): when the others
# release a silent host's leases, that host's own clock has already told it the lease is no
# longer its (its last renewal was at most one interval after its last heartbeat).
GONE_AFTER = LEASE_TTL + HEARTBEAT_INTERVAL + 10.0
DEAD_AFTER = 600.0
FORGET_AFTER = 7 * 86400.0
FORGET_EVERY = 720  # heartbeats between two passes dropping forgotten records (an hour)


@dataclass(frozen=True, kw_only=True)
class PoolLoad:
    name: str
    runners: int  # this host's runners of the pool, any state
    max_runners: int


@dataclass(frozen=True, kw_only=True)
class HostRecord:
    """One host's heartbeat, as stored (JSON) and as shown."""

    host: str
    version: str
    pools: tuple[PoolLoad, ...]
    runners: int  # in use, all pools
    max_runners: int  # the host's cap ([scheduler] max_runners)
    drained: bool
    started_at: float
    heartbeat_at: float

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> HostRecord:
        raw: dict[str, Any] = json.loads(text)
        raw["pools"] = tuple(PoolLoad(**p) for p in raw.get("pools", ()))
        return cls(**raw)


@dataclass(frozen=True, kw_only=True)
class HostView:
    record: HostRecord
    gone: bool
    dead: bool
    age: float  # seconds since its last heartbeat


class Hosts:
    """Reads and writes the fleet's host records; ``beat`` is the heartbeat service."""

    def __init__(
        self,
        fleet: FleetRedis,
        *,
        host: str,
        clock: Callable[[], float] = time.time,
        gone_after: float = GONE_AFTER,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        self.fleet = fleet
        self.host = host
        self._clock = clock
        self.gone_after = gone_after
        self.dead_after = dead_after
        self._index = fleet.key("hosts")

    def _record_key(self, host: str) -> str:
        return self.fleet.key("host", host)

    async def publish(self, record: HostRecord) -> None:
        def write(client: redis.Redis[str]) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.set(self._record_key(record.host), record.dump())
            pipe.zadd(self._index, {record.host: record.heartbeat_at})
            pipe.execute()

        await self.fleet.run(write)

    async def views(self) -> list[HostView]:
        """Every host that heartbeated in the last ``FORGET_AFTER``, by name."""
        now = self._clock()

        def read(client: redis.Redis[str]) -> list[str | None]:
            names = client.zrangebyscore(self._index, now - FORGET_AFTER, "+inf")
            if not names:
                return []
            return client.mget([self._record_key(n) for n in names])

        views = []
        for text in await self.fleet.run(read):
            if text is None:
                continue
            record = HostRecord.load(text)
            age = max(0.0, now - record.heartbeat_at)
            views.append(
                HostView(
                    record=record, gone=age > self.gone_after, dead=age > self.dead_after, age=age
                )
            )
        return sorted(views, key=lambda v: v.record.host)

    async def dead_instances(self) -> frozenset[str]:
        """Hosts gone for ``dead_after``: their idle offline registrations may be swept."""
        return frozenset(
            v.record.host for v in await self.views() if v.dead and v.record.host != self.host
        )

    async def forget_old(self) -> int:
        cutoff = self._clock() - FORGET_AFTER

        def forget(client: redis.Redis[str]) -> int:
            old = client.zrangebyscore(self._index, "-inf", cutoff)
            for name in old:
                client.delete(self._record_key(name))
            return int(client.zremrangebyscore(self._index, "-inf", cutoff))

        return await self.fleet.run(forget)

    async def release_gone(self, views: list[HostView] | None = None) -> list[str]:
        """Release the leases of every gone host (of ``views``, else read now); returns the
        hosts that held some."""
        released = []
        for view in await self.views() if views is None else views:
            gone = view.gone and view.record.host != self.host
            if gone and await release_host(self.fleet, view.record.host):
                log.warning(
                    "fleet: host %s has not heartbeated for %.0fs: released its leases",
                    view.record.host,
                    view.age,
                )
                released.append(view.record.host)
        return released

    async def beat(
        self,
        snapshot: Callable[[float], HostRecord],
        *,
        interval: float = HEARTBEAT_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Publish ``snapshot(now)`` every ``interval`` and release gone hosts' leases, until
        cancelled. Redis being away is logged once per outage and retried each interval."""
        task_status.started()
        away = False
        beats = 0
        while True:
            try:
                await self.publish(snapshot(self._clock()))
                await self.release_gone(await self.views())
                if beats % FORGET_EVERY == 0:
                    await self.forget_old()
                beats += 1
                if away:
                    log.info("fleet: heartbeats resumed")
                away = False
            except RedisUnavailable as exc:
                if not away:
                    log.warning("fleet: heartbeat not written: %s", exc)
                away = True
            await trio.sleep(interval)
