"""Leases on a real redis-server: one holder at a time, takeover on expiry, no stealing."""

from __future__ import annotations

import pytest
import trio

from agent.fleet.handle import FleetRedis
from agent.fleet.leases import RECONCILER, REGISTRATION_SWEEP, Lease, holders, release_host

pytestmark = pytest.mark.redis


async def test_one_holder_at_a_time(fleet: FleetRedis) -> None:
    a = Lease(fleet, RECONCILER, host="a")
    b = Lease(fleet, RECONCILER, host="b")
    assert await a.refresh()
    assert not await b.refresh()
    assert await a.refresh()  # a renewal, not a second take
    assert a.held and not b.held
    assert (await holders(fleet))[RECONCILER] == "a"
    await a.release()
    assert not a.held
    assert await b.refresh()
    assert (await holders(fleet)) == {RECONCILER: "b", REGISTRATION_SWEEP: None}


async def test_release_and_renew_never_touch_another_hosts_lease(fleet: FleetRedis) -> None:
    a = Lease(fleet, RECONCILER, host="a", ttl=0.2)
    b = Lease(fleet, RECONCILER, host="b")
    assert await a.refresh()
    with trio.fail_after(10):
        while not await b.refresh():  # noqa: ASYNC110 - polls Redis's expiry of a's lease
            await trio.sleep(0.05)
    assert not a.held  # by a's own clock, its ttl has passed
    assert not await a.refresh()  # a's renew script sees b's value: no extension, no take
    await a.release()  # deletes only a's own value
    assert (await holders(fleet))[RECONCILER] == "b"
    assert b.held


async def test_a_dead_holder_is_taken_over(fleet: FleetRedis) -> None:
    """The holding task is cancelled without its release reaching Redis (as a SIGKILL would):
    the lease expires and another host's ``hold`` takes it."""
    dead = Lease(fleet, REGISTRATION_SWEEP, host="dead", ttl=0.3)
    assert await dead.refresh()  # and then never again
    survivor = Lease(fleet, REGISTRATION_SWEEP, host="alive", ttl=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(survivor.hold)
        with trio.fail_after(10):
            await survivor.wait_held()
        assert (await holders(fleet))[REGISTRATION_SWEEP] == "alive"
        nursery.cancel_scope.cancel()
    assert (await holders(fleet))[REGISTRATION_SWEEP] is None  # released on the clean stop


async def test_release_host_drops_only_that_hosts_leases(fleet: FleetRedis) -> None:
    assert await Lease(fleet, RECONCILER, host="build").refresh()
    assert await Lease(fleet, REGISTRATION_SWEEP, host="build-2").refresh()
    assert await release_host(fleet, "build") == 1  # not "build-2", a name it prefixes
    assert await holders(fleet) == {RECONCILER: None, REGISTRATION_SWEEP: "build-2"}
