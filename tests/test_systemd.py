"""agent/systemd.py against a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def _next(sock: socket.socket) -> str:
    with trio.fail_after(10):
        await trio.lowlevel.wait_readable(sock)
    return sock.recv(4096).decode()


async def test_state_changes_reach_the_socket(notify_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    notifier.ready("serving")
    assert await _next(notify_socket) == "READY=1\nSTATUS=serving"
    notifier.reloading()
    assert (await _next(notify_socket)).startswith("RELOADING=1\nMONOTONIC_USEC=")
    notifier.stopping()
    assert await _next(notify_socket) == "STOPPING=1"


async def test_watchdog_from_the_event_loop_and_status_when_it_changes(
    notify_socket: socket.socket,
) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = Notifier(env)
    assert notifier.watchdog_interval == 0.1
    status = ["running 0, queued 2, idle 1"]
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.keep_alive, lambda: status[0])
        assert await _next(notify_socket) == "WATCHDOG=1\nSTATUS=running 0, queued 2, idle 1"
        assert await _next(notify_socket) == "WATCHDOG=1"  # unchanged status is not repeated
        status[0] = "running 1, queued 1, idle 0"
        while (message := await _next(notify_socket)) == "WATCHDOG=1":
            pass
        assert message == "WATCHDOG=1\nSTATUS=running 1, queued 1, idle 0"
        nursery.cancel_scope.cancel()


def test_no_watchdog_for_another_pid_or_without_systemd() -> None:
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    assert not Notifier({}).enabled
    Notifier({}).ready("nothing happens")  # no socket: a no-op, no error


async def test_a_reader_that_lags_never_blocks_the_caller(notify_socket: socket.socket) -> None:
    """Nobody reads: the socket's queue fills, and notify() drops instead of blocking."""
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})

    def flood() -> None:
        for i in range(200):
            notifier.status(f"message {i}")

    with trio.fail_after(10):
        await trio.to_thread.run_sync(flood, abandon_on_cancel=True)
    assert 0 < notifier.dropped < 200
    assert (await _next(notify_socket)) == "STATUS=message 0"  # what fitted arrived intact
    dropped = notifier.dropped
    notify_socket.close()
    notifier.stopping()  # systemd went away: logged, not raised
    assert notifier.dropped == dropped + 1
