"""Host records on a real redis-server: heartbeats, gone and dead hosts, their leases."""

from __future__ import annotations

import pytest

from agent.fleet.handle import FleetRedis
from agent.fleet.hosts import GONE_AFTER, HostRecord, Hosts, PoolLoad
from agent.fleet.leases import RECONCILER, Lease, holders
from tests.queue.queue_support import FakeClock

pytestmark = pytest.mark.redis


def record(host: str, now: float, *, runners: int = 1, drained: bool = False) -> HostRecord:
    return HostRecord(
        host=host,
        version="0.1.0",
        pools=(PoolLoad(name="linux", runners=runners, max_runners=4),),
        runners=runners,
        max_runners=8,
        drained=drained,
        started_at=now - 100,
        heartbeat_at=now,
    )


async def test_heartbeats_are_listed_and_a_silent_host_is_gone(fleet: FleetRedis) -> None:
    clock = FakeClock()
    a = Hosts(fleet, host="a", clock=clock)
    b = Hosts(fleet, host="b", clock=clock)
    await a.publish(record("a", clock.now, runners=2))
    await b.publish(record("b", clock.now, drained=True))
    views = await a.views()
    assert [(v.record.host, v.gone, v.record.runners, v.record.drained) for v in views] == [
        ("a", False, 2, False),
        ("b", False, 1, True),
    ]
    assert views[0].record.pools == (PoolLoad(name="linux", runners=2, max_runners=4),)
    clock.advance(GONE_AFTER + 1)
    await a.publish(record("a", clock.now))  # a keeps beating, b stopped
    gone = {v.record.host: v.gone for v in await a.views()}
    assert gone == {"a": False, "b": True}
    assert await a.dead_instances() == frozenset()  # gone, not yet dead
    clock.advance(a.dead_after)
    assert await a.dead_instances() == {"b"}


async def test_a_gone_hosts_leases_are_released(fleet: FleetRedis) -> None:
    clock = FakeClock()
    a = Hosts(fleet, host="a", clock=clock)
    await Hosts(fleet, host="b", clock=clock).publish(record("b", clock.now))
    assert await Lease(fleet, RECONCILER, host="b").refresh()
    assert await a.release_gone() == []  # b is alive: its lease stays
    assert (await holders(fleet))[RECONCILER] == "b"
    clock.advance(GONE_AFTER + 1)
    assert await a.release_gone() == ["b"]
    assert (await holders(fleet))[RECONCILER] is None
    assert await Lease(fleet, RECONCILER, host="a").refresh()
