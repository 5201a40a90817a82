"""One long-lived thread that runs a blocking client's calls, one at a time, for its owner's life.

The SQLite writer connection (``agent.db``) and the Redis queue connection (``agent.queue.redis``)
each have one. Not ``trio.to_thread.run_sync`` per call: its hand-off (limiter, thread-cache
checkout, context copy) measured ≈ 10 to 25 µs more per call on the 2-core build machine, against
≈ 55 µs for the whole round trip between trio and a thread (docs/benchmarks.md, "Queue"). A
single thread also keeps a connection that is not thread-safe on one thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class WorkerThread:
    """Runs ``fn`` calls in order on its own thread. Create and use it from one trio run."""

    def __init__(self, name: str) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._stopped = False

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread and return (or raise) what it did.

        Never abandoned: once submitted, the call finishes before cancellation is delivered (at
        the caller's next checkpoint), so a caller never mistakes a write that happened for one
        that did not. Raises ``trio.ClosedResourceError`` after ``aclose``.
        """
        if self._stopped:
            raise trio.ClosedResourceError(f"thread {self._thread.name!r} has stopped")
        done = trio.Event()
        returned: list[T] = []
        raised: list[BaseException] = []

        def call() -> None:
            try:
                returned.append(fn())
            except BaseException as exc:  # handed to the waiting task, raised there
                raised.append(exc)
            with contextlib.suppress(trio.RunFinishedError):  # trio.run ended: nobody waits
                self._token.run_sync_soon(done.set)

        self._calls.put(call)
        with trio.CancelScope(shield=True):
            await done.wait()
        if raised:
            raise raised[0]
        return returned[0]

    async def aclose(self) -> None:
        """Stop the thread once the calls submitted before have finished."""
        if self._stopped:
            return
        self._stopped = True
        self._calls.put(None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
