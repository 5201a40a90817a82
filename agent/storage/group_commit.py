"""Group commit: items submitted while one batch is being committed share the next commit.

The SQLite writer (``agent.db``: one ``BEGIN IMMEDIATE … COMMIT``, so one fsync, per batch) and
the Redis queue (``agent.queue.redis``: one pipelined round trip per batch) both use it, so
concurrent intake requests are not serialised behind one commit each.

No batching delay: a submit while nothing is in flight is flushed alone, at once. Those that
arrive during a flush wait, and the next flush takes all of them. Every waiter is woken when a
flush ends (one broadcast, not one hand-off per waiter through a lock's queue); the first to
run leads the next flush, the ones whose items were in the ended batch return.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import trio

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(eq=False)
class Entry(Generic[ItemT, ResultT]):
    """One submitted item and, once its batch has been flushed, its own outcome."""

    item: ItemT
    result: ResultT | None = None
    error: BaseException | None = None  # set instead of ``result`` when this item failed
    taken: bool = False  # a flush owns it: it will be flushed, whatever happens to its caller
    done: trio.Event = field(default_factory=trio.Event)


Flush = Callable[[Sequence[Entry[ItemT, ResultT]]], Awaitable[None]]


class GroupCommit(Generic[ItemT, ResultT]):
    """Runs ``flush(batch)`` over the items submitted so far, one flush at a time.

    ``flush`` commits the batch and sets each entry's ``result`` or ``error`` (one item's
    failure is its own); if it raises instead, nothing of the batch counts as committed and
    every entry of that batch raises that error. Other batches are not affected. ``flush`` runs
    shielded from cancellation: once it starts, it finishes.
    """

    def __init__(self, flush: Flush[ItemT, ResultT], *, name: str) -> None:
        self._flush = flush
        self._name = name
        self._pending: list[Entry[ItemT, ResultT]] = []
        self._flushing = False
        self._flushed = trio.Event()  # set and replaced after every flush
        self._closed = False

    async def submit(self, item: ItemT) -> ResultT:
        """Commit ``item`` in the next batch; return its result or raise its error.

        Cancellation: an item not yet taken into a batch is withdrawn (never flushed) and the
        caller gets ``Cancelled``. Once taken, it is not abandoned: the caller gets the item's
        outcome and the cancellation is delivered at its next checkpoint, so a caller never
        mistakes a committed item for a lost one. Raises ``trio.ClosedResourceError`` after
        ``aclose`` (also for items still waiting when it was called).
        """
        if self._closed:
            raise trio.ClosedResourceError(f"{self._name} is closed")
        entry: Entry[ItemT, ResultT] = Entry(item)
        self._pending.append(entry)
        try:
            while not entry.taken:
                if self._flushing:  # the flush after this one takes the entry
                    await self._flushed.wait()
                else:
                    await self._flush_pending()
        except trio.Cancelled:
            # Never taken: a flush takes only entries whose owners are running or were woken by
            # the end of the flush before, and a woken task can no longer be cancelled there.
            self._pending.remove(entry)
            raise
        # Taken, maybe by a flush that is still running: wait for the outcome.
        with trio.CancelScope(shield=True):
            await entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return cast(ResultT, entry.result)

    async def _flush_pending(self) -> None:
        batch, self._pending = self._pending, []
        for entry in batch:
            entry.taken = True
        self._flushing = True
        try:
            if self._closed:
                raise trio.ClosedResourceError(f"{self._name} is closed")
            with trio.CancelScope(shield=True):
                await self._flush(batch)
        except BaseException as exc:  # the batch failed as a whole; its waiters raise it
            for entry in batch:
                entry.result, entry.error = None, exc
        finally:
            self._flushing = False
            for entry in batch:
                entry.done.set()
            self._flushed.set()
            self._flushed = trio.Event()

    async def aclose(self) -> None:
        """Refuse new items and wait for the flush in flight; no flush starts after this."""
        self._closed = True
        with trio.CancelScope(shield=True):
            while self._flushing:
                await self._flushed.wait()
