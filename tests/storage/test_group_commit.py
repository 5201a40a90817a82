"""agent/storage/group_commit.py: batching, cancellation and errors, on a flush the test gates."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from agent.storage.group_commit import Entry, GroupCommit


class Rejected(Exception):
    pass


class Store:
    """A flush that records its batches and waits at a gate the test opens."""

    def __init__(self, *, gated: bool = True) -> None:
        self.batches: list[list[str]] = []
        self.flushing = trio.Event()  # set when a flush has begun
        self.gate = trio.Event()
        self.gated = gated
        self.commits: GroupCommit[str, str] = GroupCommit(self.flush, name="test store")

    async def flush(self, batch: Sequence[Entry[str, str]]) -> None:
        items = [e.item for e in batch]
        self.flushing.set()
        if self.gated:
            await self.gate.wait()
        if "fail-batch" in items:
            raise Rejected("the whole batch")
        self.batches.append(items)
        for entry in batch:
            if entry.item.startswith("bad"):
                entry.error = Rejected(entry.item)
            else:
                entry.result = f"{entry.item} committed"

    @asynccontextmanager
    async def callers(self) -> AsyncIterator[trio.Nursery]:
        """A nursery for the callers. On the way out the gate stays open, so a test that fails
        does not hang on a flush that cannot be cancelled."""
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                self.ungate()

    def sorted_batches(self) -> list[list[str]]:
        """The batches flushed, each sorted: tasks started together run in any order."""
        return [sorted(batch) for batch in self.batches]

    def ungate(self) -> None:
        """Let this and every later flush through."""
        self.gated = False
        self.gate.set()

    def open_gate(self) -> None:
        self.gate.set()
        self.gate = trio.Event()
        self.flushing = trio.Event()


async def test_a_lone_item_is_flushed_at_once() -> None:
    store = Store(gated=False)
    assert await store.commits.submit("a") == "a committed"
    assert store.sorted_batches() == [["a"]]


async def test_items_submitted_during_a_flush_share_the_next_one() -> None:
    store = Store()
    results: dict[str, str] = {}

    async def submit(item: str) -> None:
        results[item] = await store.commits.submit(item)

    async with store.callers() as nursery:
        nursery.start_soon(submit, "a")
        await store.flushing.wait()  # "a" is being flushed alone
        for item in "bcd":
            nursery.start_soon(submit, item)
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
        await store.flushing.wait()  # the next flush took everything that waited
        store.open_gate()
    assert store.sorted_batches() == [["a"], ["b", "c", "d"]]
    assert results == {item: f"{item} committed" for item in "abcd"}


async def test_callers_that_submit_again_at_once_join_the_next_batch_whole() -> None:
    """Four callers in a loop, as intake tasks and the scheduler are: once they are seen to be
    concurrent, every flush carries one item of each (none leads a small batch of its own)."""
    sizes: list[int] = []

    async def flush(batch: Sequence[Entry[str, str]]) -> None:
        await trio.lowlevel.checkpoint()  # a commit hands off to a thread and back
        sizes.append(len(batch))
        for entry in batch:
            entry.result = entry.item

    commits: GroupCommit[str, str] = GroupCommit(flush, name="loop")

    async def caller(task: int) -> None:
        for i in range(10):
            await commits.submit(f"{task}-{i}")

    async with trio.open_nursery() as nursery:
        for task in range(4):
            nursery.start_soon(caller, task)
    assert sum(sizes) == 40
    assert sizes[1:-1] == [4] * (len(sizes) - 2)  # the first ran alone; the last, three left


async def test_an_item_error_fails_that_caller_alone() -> None:
    store = Store()
    outcomes: dict[str, str] = {}

    async def submit(item: str) -> None:
        try:
            outcomes[item] = await store.commits.submit(item)
        except Rejected as exc:
            outcomes[item] = f"rejected: {exc}"

    async with store.callers() as nursery:
        nursery.start_soon(submit, "a")
        await store.flushing.wait()
        for item in ("b", "bad-c", "d"):
            nursery.start_soon(submit, item)
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
        await store.flushing.wait()
        store.open_gate()
    assert store.sorted_batches() == [["a"], ["b", "bad-c", "d"]]
    assert outcomes == {
        "a": "a committed",
        "b": "b committed",
        "bad-c": "rejected: bad-c",
        "d": "d committed",
    }


async def test_a_failed_flush_fails_its_batch_and_no_other() -> None:
    store = Store()
    outcomes: dict[str, str] = {}

    async def submit(item: str) -> None:
        try:
            outcomes[item] = await store.commits.submit(item)
        except Rejected as exc:
            outcomes[item] = f"rejected: {exc}"

    async with store.callers() as nursery:
        nursery.start_soon(submit, "a")
        await store.flushing.wait()
        for item in ("b", "fail-batch"):
            nursery.start_soon(submit, item)
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
        await store.flushing.wait()  # the failing batch is in flight
        nursery.start_soon(submit, "c")
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
        await store.flushing.wait()
        store.open_gate()
    assert store.sorted_batches() == [["a"], ["c"]]
    assert outcomes == {
        "a": "a committed",
        "b": "rejected: the whole batch",
        "fail-batch": "rejected: the whole batch",
        "c": "c committed",
    }


async def cancellable(
    store: Store, item: str, scope: trio.CancelScope, results: dict[str, str]
) -> None:
    """Submit ``item`` inside ``scope``; once a result is in, the cancellation must land."""
    with scope:
        results[item] = await store.commits.submit(item)
        await trio.lowlevel.checkpoint()
        pytest.fail("the cancellation was lost")


async def test_a_caller_cancelled_while_waiting_withdraws_its_item() -> None:
    store = Store()
    results: dict[str, str] = {}
    scope = trio.CancelScope()

    async def submit(item: str) -> None:
        results[item] = await store.commits.submit(item)

    async with store.callers() as nursery:
        nursery.start_soon(submit, "a")
        await store.flushing.wait()
        nursery.start_soon(cancellable, store, "withdrawn", scope, results)
        nursery.start_soon(submit, "b")
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # "withdrawn" waited for the next flush: nothing of it was sent
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
        await store.flushing.wait()
        store.open_gate()
    assert scope.cancelled_caught
    assert store.sorted_batches() == [["a"], ["b"]]
    assert results == {"a": "a committed", "b": "b committed"}


async def test_callers_cancelled_in_flight_still_get_their_results() -> None:
    store = Store()
    results: dict[str, str] = {}
    scopes = {item: trio.CancelScope() for item in "abc"}

    async with store.callers() as nursery:
        nursery.start_soon(cancellable, store, "a", scopes["a"], results)
        await store.flushing.wait()  # "a" is flushed alone, by its own task
        for item in "bc":
            nursery.start_soon(cancellable, store, item, scopes[item], results)
        await trio.testing.wait_all_tasks_blocked()
        scopes["a"].cancel()  # the leader, mid-flush
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
        await store.flushing.wait()  # "b" and "c" are in flight, one of them leads the flush
        for item in "bc":
            scopes[item].cancel()
        await trio.testing.wait_all_tasks_blocked()
        store.open_gate()
    # Every item in flight was committed and its caller told so, despite the cancellations.
    assert store.sorted_batches() == [["a"], ["b", "c"]]
    assert results == {item: f"{item} committed" for item in "abc"}
    assert all(scope.cancelled_caught for scope in scopes.values())


async def test_close_waits_for_the_flush_in_flight_and_refuses_the_rest() -> None:
    store = Store()
    outcomes: dict[str, str] = {}

    async def submit(item: str) -> None:
        try:
            outcomes[item] = await store.commits.submit(item)
        except trio.ClosedResourceError:
            outcomes[item] = "refused"

    async with store.callers() as nursery:
        nursery.start_soon(submit, "a")
        await store.flushing.wait()
        nursery.start_soon(submit, "waiting")
        await trio.testing.wait_all_tasks_blocked()
        closed = trio.Event()

        async def close() -> None:
            await store.commits.aclose()
            closed.set()

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()  # "a" is still being flushed
        nursery.start_soon(submit, "after")
        store.ungate()  # were "waiting" flushed after all, the batches below would show it
        await closed.wait()
    assert store.sorted_batches() == [["a"]]
    assert outcomes == {"a": "a committed", "waiting": "refused", "after": "refused"}


async def test_random_cancellations_never_lose_or_invent_a_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Whatever is cancelled when: a caller returns a result exactly when its item was flushed
    (once), and gets Cancelled exactly when it was not."""
    flushed: list[str] = []

    async def flush(batch: Sequence[Entry[str, str]]) -> None:
        await trio.sleep(0.01)  # a commit takes time: later callers pile up behind it
        for entry in batch:
            flushed.append(entry.item)
            entry.result = entry.item

    commits: GroupCommit[str, str] = GroupCommit(flush, name="random")
    rng = random.Random(11)
    returned: list[str] = []
    cancelled: list[str] = []

    async def caller(i: int) -> None:
        await trio.sleep(rng.random() * 0.2)
        item = f"item-{i}"
        with trio.move_on_after(rng.random() * 0.03) as scope:
            returned.append(await commits.submit(item))
            await trio.sleep_forever()  # only the deadline ends it
        assert scope.cancelled_caught
        if item not in returned:
            cancelled.append(item)

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(caller, i)
    assert sorted(flushed) == sorted(returned)
    assert len(set(flushed)) == len(flushed)
    assert len(returned) + len(cancelled) == 300
    assert returned and cancelled  # both kinds of outcome happened
