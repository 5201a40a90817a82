"""Job events through a real Redis: each reaches the hosts it concerns, in order, and survives
the receiving host being down or crashing before it acknowledged what it read."""

from __future__ import annotations

from functools import partial

import trio

from agent.container.events import JobEvent
from agent.fleet.events import GROUP, FleetEvents
from agent.fleet.ownership import Ownership
from agent.fleet.stream_redis import StreamRedis
from agent.queue.redis import open_redis_queue
from tests.queue.queue_support import RedisServer, spec


def running(job_id: int, runner: str | None) -> JobEvent:
    return JobEvent(job_id=job_id, action="in_progress", runner_name=runner)


def completed(job_id: int, runner: str | None) -> JobEvent:
    return JobEvent(job_id=job_id, action="completed", runner_name=runner, conclusion="success")


async def stream_length(r: StreamRedis, host: str) -> int:
    key = r.key("events", host)
    return await r.run(lambda c: c.xlen(key))


async def collect(
    events: FleetEvents, count: int, *, nursery: trio.Nursery
) -> trio.MemoryReceiveChannel[JobEvent]:
    """Follow ``events`` into a channel the test reads from."""
    send, receive = trio.open_memory_channel[JobEvent](count)
    await nursery.start(events.follow, send)
    return receive


async def test_an_event_for_another_hosts_runner_goes_to_that_host_only(
    fleet_redis: StreamRedis,
) -> None:
    host_a, host_b = FleetEvents(fleet_redis, "a"), FleetEvents(fleet_redis, "b")
    await Ownership(fleet_redis, "a").claim("runner-a-1", 1)
    # "the runner made for job 1 took job 2", delivered to host b
    assert await host_b.publish(running(2, "runner-a-1")) == ["a"]
    assert host_b.forwarded == 1
    assert await stream_length(fleet_redis, "a") == 1
    assert await stream_length(fleet_redis, "b") == 0
    async with trio.open_nursery() as nursery:
        received = await collect(host_a, 1, nursery=nursery)
        with trio.fail_after(10):
            assert await received.receive() == running(2, "runner-a-1")
        nursery.cancel_scope.cancel()


async def test_a_job_event_reaches_the_owner_of_its_runner_and_of_the_runner_made_for_it(
    fleet_redis: StreamRedis,
) -> None:
    """Host b made a runner for job 2; host a's runner took it: both hear of its start, and
    its completion (naming no runner: the runner is gone) still reaches both."""
    await Ownership(fleet_redis, "a").claim("runner-a-1", 1)
    await Ownership(fleet_redis, "b").claim("runner-b-1", 2)
    host_c = FleetEvents(fleet_redis, "c")
    assert sorted(await host_c.publish(running(2, "runner-a-1"))) == ["a", "b"]
    assert sorted(await host_c.publish(completed(2, None))) == ["a", "b"]
    assert await stream_length(fleet_redis, "c") == 0


async def test_an_event_nobody_has_a_stake_in_stays_with_the_receiving_host(
    fleet_redis: StreamRedis,
) -> None:
    host_b = FleetEvents(fleet_redis, "b")
    assert await host_b.publish(running(9, "hand-installed-runner")) == ["b"]
    assert host_b.forwarded == 0


async def test_events_sent_while_a_host_is_down_reach_it_in_order_when_it_returns(
    fleet_redis: StreamRedis,
) -> None:
    await Ownership(fleet_redis, "a").claim("runner-a-1", 1)
    sender = FleetEvents(fleet_redis, "b")
    sent = [running(1, "runner-a-1"), completed(1, "runner-a-1")]
    for event in sent:
        await sender.publish(event)
    host_a = FleetEvents(fleet_redis, "a")
    async with trio.open_nursery() as nursery:
        received = await collect(host_a, 2, nursery=nursery)
        with trio.fail_after(10):
            assert [await received.receive(), await received.receive()] == sent
        nursery.cancel_scope.cancel()


async def test_an_event_read_but_never_acknowledged_is_read_again_after_a_crash(
    fleet_redis: StreamRedis,
) -> None:
    await Ownership(fleet_redis, "a").claim("runner-a-1", 1)
    await FleetEvents(fleet_redis, "b").publish(running(1, "runner-a-1"))
    host_a = FleetEvents(fleet_redis, "a")
    stream = host_a.stream

    def read_without_ack(c: object) -> object:
        c.xgroup_create(stream, GROUP, id="0", mkstream=True)  # type: ignore[attr-defined]
        return c.xreadgroup(GROUP, "a", {stream: ">"}, count=10)  # type: ignore[attr-defined]

    assert await fleet_redis.run(read_without_ack)  # read, then "crashed" before the ack
    async with trio.open_nursery() as nursery:
        received = await collect(FleetEvents(fleet_redis, "a"), 1, nursery=nursery)
        with trio.fail_after(10):
            assert await received.receive() == running(1, "runner-a-1")
        nursery.cancel_scope.cancel()
    pending = await fleet_redis.run(lambda c: c.xpending(stream, GROUP))  # type: ignore[no-untyped-call]
    assert pending["pending"] == 0


async def test_a_released_runner_no_longer_routes_but_its_job_still_reaches_its_host(
    fleet_redis: StreamRedis,
) -> None:
    owner = Ownership(fleet_redis, "a")
    await owner.claim("runner-a-1", 1)
    assert await owner.owner("runner-a-1") == "a"
    await owner.release("runner-a-1")
    assert await owner.owner("runner-a-1") is None
    assert await FleetEvents(fleet_redis, "b").publish(completed(1, "runner-a-1")) == ["a"]


async def test_a_follower_whose_group_the_server_lost_makes_it_again(
    fleet_redis: StreamRedis,
) -> None:
    """A restart without the append-only file, or a failover to a replica that lacked it."""
    await Ownership(fleet_redis, "a").claim("runner-a-1", 1)
    host_a = FleetEvents(fleet_redis, "a")
    sender = FleetEvents(fleet_redis, "b")
    async with trio.open_nursery() as nursery:
        received = await collect(host_a, 2, nursery=nursery)
        await sender.publish(running(1, "runner-a-1"))
        with trio.fail_after(10):
            assert await received.receive() == running(1, "runner-a-1")
        stream = host_a.stream
        await fleet_redis.run(lambda c: c.delete(stream))
        await sender.publish(completed(1, "runner-a-1"))
        with trio.fail_after(10):
            assert await received.receive() == completed(1, "runner-a-1")
        nursery.cancel_scope.cancel()


async def test_a_job_that_ended_before_this_host_recorded_its_stake_is_still_heard_of(
    fleet_redis: StreamRedis, redis_server: RedisServer, prefix: str
) -> None:
    """Host a claimed job 2 and is making a runner for it, but the job ran and completed on
    another host's runner before a's stake was written: its events went elsewhere. Writing the
    stake looks at the queue and puts what a missed in its own stream."""
    async with open_redis_queue(redis_server.url, prefix=prefix) as queue:
        await queue.enqueue(spec(2))
        await queue.enqueue(spec(3))
        await queue.mark_running(2, "runner-b-1")
        await queue.finish(2, "success")
        host_a = FleetEvents(fleet_redis, "a")
        owner = Ownership(fleet_redis, "a", staked=partial(host_a.catch_up, queue))
        await owner.claim("runner-a-1", 2)
        await owner.claim("runner-a-2", 3)  # still queued: nothing to catch up on
        await owner.claim("runner-a-2", 3)  # unchanged: not even looked at again
        assert await stream_length(fleet_redis, "a") == 1
        async with trio.open_nursery() as nursery:
            received = await collect(host_a, 1, nursery=nursery)
            with trio.fail_after(10):
                event = await received.receive()
            nursery.cancel_scope.cancel()
    assert event == JobEvent(
        job_id=2, action="completed", runner_name="runner-b-1", conclusion="success"
    )
