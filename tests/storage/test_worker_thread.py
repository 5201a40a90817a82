"""agent/storage/worker_thread.py: calls run in order on one thread and are never abandoned."""

from __future__ import annotations

import threading
from functools import partial

import pytest
import trio
import trio.testing

from agent.storage.worker_thread import WorkerThread


async def test_calls_run_in_order_on_one_thread() -> None:
    worker = WorkerThread("test")
    try:
        seen: list[tuple[int, str]] = []

        def record(i: int) -> int:
            seen.append((i, threading.current_thread().name))
            return i * 2

        assert [await worker.run(partial(record, i)) for i in range(5)] == [0, 2, 4, 6, 8]
        assert seen == [(i, "test") for i in range(5)]
        assert threading.current_thread().name != "test"
    finally:
        await worker.aclose()


async def test_errors_are_raised_in_the_caller() -> None:
    worker = WorkerThread("test")
    try:

        def boom() -> None:
            raise ValueError("from the thread")

        with pytest.raises(ValueError, match="from the thread"):
            await worker.run(boom)
        assert await worker.run(lambda: "still serving") == "still serving"
    finally:
        await worker.aclose()


async def test_a_started_call_finishes_before_cancellation_lands() -> None:
    worker = WorkerThread("test")
    release = threading.Event()
    finished: list[str] = []

    def slow() -> str:
        release.wait(30)
        finished.append("done")
        return "done"

    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_then_release() -> None:
                    await trio.testing.wait_all_tasks_blocked()  # the call is on the thread
                    scope.cancel()
                    release.set()

                nursery.start_soon(cancel_then_release)
                assert await worker.run(slow) == "done"  # the result arrives despite the cancel
                await trio.lowlevel.checkpoint()  # and the cancellation lands here
                pytest.fail("cancellation was lost")
        assert scope.cancelled_caught
        assert finished == ["done"]
    finally:
        await worker.aclose()


async def test_closed_thread_refuses_calls() -> None:
    worker = WorkerThread("test")
    await worker.aclose()
    await worker.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError, match="stopped"):
        await worker.run(lambda: None)
