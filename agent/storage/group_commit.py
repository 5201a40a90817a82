"""Group commit: items submitted while one batch is being committed share the next commit.

The SQLite writer (``agent.db``: one ``BEGIN IMMEDIATE … COMMIT``, so one fsync, per batch) and
the Redis queue (``agent.queue.redis``: one pipelined round trip per batch) both use it, so
concurrent intake requests are not serialised behind one commit each.

A submit while nothing is in flight is flushed alone, at once. Those that arrive during a flush
wait, and the next flush takes all of them. Every waiter is woken when a flush ends (one
broadcast, not one hand-off per waiter through a lock's queue, which held each batch's callers
back one scheduler pass each: docs/benchmarks.md); the first to run leads the next flush, the
ones whose items were in the ended batch return. After a batch of several items the leader
first yields two scheduler passes, so the callers just answered can submit again and join it:
without that a Redis round trip (≈ 100 µs) is short enough that batches halve (measured with 8
tasks: 4.4 calls per round trip instead of 8, a quarter fewer calls/s than the lock walk it
replaces). A lone sequential caller never waits for those passes.
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
        self._flushing = False  # a flush runs, or its leader is gathering the batch
        self._flushed = trio.Event()  # set and replaced after every flush
        self._gather = False  # the last batch had several items: gather the next one
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
                if self._flushing:  # this flush (if still gathering) or the next takes it
                    await self._flushed.wait()
                else:
                    await self._flush_pending()
        except trio.Cancelled:
            if not entry.taken:  # withdrawn: it will never be flushed
                self._pending.remove(entry)
                raise
            # A gathering leader took it while this caller waited: report its outcome.
        except BaseException:  # interrupted while leading, before the batch was taken
            if not entry.taken:
                self._pending.remove(entry)
            raise
        # Taken, maybe by a flush that is still running: wait for the outcome. When it is in
        # already, return without another scheduler pass, in time to join the batch gathering.
        if not entry.done.is_set():
            with trio.CancelScope(shield=True):
                await entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return cast(ResultT, entry.result)

    async def _flush_pending(self) -> None:
        self._flushing = True
        batch: list[Entry[ItemT, ResultT]] = []
        try:
            if self._gather:
                # Callers are concurrent: let those woken with the last batch run (return,
                # submit again) so they join this batch instead of each leading a small one.
                # They run in the next scheduler pass, maybe after this task (trio shuffles a
                # pass), so wait two.
                await trio.lowlevel.cancel_shielded_checkpoint()
                await trio.lowlevel.cancel_shielded_checkpoint()
            batch, self._pending = self._pending, []
            for entry in batch:
                entry.taken = True
            self._gather = len(batch) > 1
            if self._closed:
                raise trio.ClosedResourceError(f"{self._name} is closed")
            with trio.CancelScope(shield=True):
                await self._flush(batch)
        except BaseException as exc:  # the batch failed as a whole; its waiters raise it
            if not batch:  # interrupted before taking one (the leader's own entry is pending)
                raise
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
