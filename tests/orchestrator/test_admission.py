"""Intake's admission of connections (issue 13 §9): a flood of slow connections, real sockets on
loopback from another process, neither exhausts gantryd's descriptors nor keeps a signed
delivery out."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.orchestrator.admission import Admission
from agent.queue.base import JobState
from tests.orchestrator.conftest import (
    SECRET,
    make_config,
    new_job_id,
    payload,
    serve_intake,
    sign,
)

LIMIT = 40
FLOOD = 400  # slow connections held at once by the flooding process
HEADROOM = 150  # descriptors this process may open beyond those it has: far below FLOOD

# Opens FLOOD connections that send half a request's headers and nothing more, says "ready",
# then keeps replacing each one the server closes, until its stdin closes. It inherits the
# server's lowered limit, so it first raises its own.
_FLOOD_MAIN = """
import resource, socket, sys, selectors
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # not the server's lowered limit
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
partial = b"POST /webhook HTTP/1.1\\r\\nHost: intake\\r\\nX-Slow: "
selector = selectors.DefaultSelector()
selector.register(sys.stdin, selectors.EVENT_READ)

def open_one():
    sock = socket.create_connection((host, port))
    sock.sendall(partial)
    selector.register(sock, selectors.EVENT_READ)

for _ in range(count):
    open_one()
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)
        selector.unregister(key.fileobj)
        key.fileobj.close()  # the server cut it: open another
        open_one()
"""


@pytest.fixture
def few_descriptors() -> Iterator[None]:
    """This process (the server's) may open only HEADROOM more descriptors: without a cap on
    admission, the flood would make its accept (and every other open) fail with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + HEADROOM, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_flood_of_slow_connections_neither_exhausts_descriptors_nor_starves_a_delivery(
    tmp_path: Path, few_descriptors: None
) -> None:
    # A long read_timeout: only admission makes room, not hypercorn's timeouts.
    config = make_config(tmp_path, read_timeout=120.0)
    admission = Admission(LIMIT, header_timeout=config.server.read_timeout)
    async with serve_intake(config, admission=admission) as intake:
        host, port = intake.url.removeprefix("http://").rsplit(":", 1)
        flood = await trio.lowlevel.open_process(
            [sys.executable, "-c", _FLOOD_MAIN, host, port, str(FLOOD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert flood.stdin is not None and flood.stdout is not None
        try:
            with trio.fail_after(60):
                assert (await flood.stdout.receive_some(100)).startswith(b"ready")
                jobs = [new_job_id() for _ in range(5)]
                for job_id in jobs:  # while the flood goes on
                    answer = await intake.post(payload(job_id))
                    assert answer.status_code == 201, answer.text
        finally:
            await flood.stdin.aclose()
            with trio.fail_after(30):
                await flood.wait()
            await flood.stdout.aclose()
        for job_id in jobs:
            entry = await intake.queue.get(job_id)
            assert entry is not None and entry.state is JobState.QUEUED
        assert admission.stats.peak <= LIMIT
        assert admission.stats.accept_failed == 0  # no EMFILE
        assert admission.stats.evicted > 0  # slow ones were cut to make room
        assert flood.returncode == 0  # it never saw a refused or failed connect


def raw_delivery(job_id: int) -> tuple[bytes, bytes]:
    """A signed delivery as raw HTTP/1.1: (head, body)."""
    body = json.dumps(payload(job_id), separators=(",", ":")).encode()
    head = (
        "POST /webhook HTTP/1.1\r\nHost: intake\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
        f"X-Hub-Signature-256: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode(), body


async def test_a_connection_the_app_is_serving_is_never_cut(tmp_path: Path) -> None:
    """With room for one connection, a second one waits while the first one's request (its
    body still arriving) is in the app, and is admitted once that one has been answered."""
    config = make_config(tmp_path, read_timeout=60.0)
    admission = Admission(1, header_timeout=config.server.read_timeout)
    async with serve_intake(config, admission=admission) as intake:
        host, port = intake.url.removeprefix("http://").rsplit(":", 1)
        head, body = raw_delivery(new_job_id())
        with trio.fail_after(60):
            first = await trio.open_tcp_stream(host, int(port))
            await first.send_all(head + body[:10])
            await trio.testing.wait_all_tasks_blocked()  # the app waits for the rest
            async with trio.open_nursery() as nursery:
                answers: list[int] = []

                async def second() -> None:
                    answers.append((await intake.post(payload(new_job_id()))).status_code)

                nursery.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                assert admission.stats.at_limit == 1 and answers == []  # it waits for room
                await first.send_all(body[10:])
                assert (await first.receive_some(4096)).startswith(b"HTTP/1.1 201")
                await first.aclose()
        assert answers == [201]
        assert admission.stats.evicted == 0


async def _answer(stream: trio.SocketStream) -> bytes:
    """One whole HTTP answer (intake's have a Content-Length and no chunking)."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += await stream.receive_some(4096)
    head, _, rest = reply.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += await stream.receive_some(4096)
    return head


async def test_an_idle_keep_alive_connection_outlives_read_timeout_until_keep_alive_timeout(
    tmp_path: Path,
) -> None:
    """A sender that keeps a connection idle for longer than read_timeout, but less than
    keep_alive_timeout, sends its next delivery on it and is answered: gantryd never closes
    an idle connection before the sender's own idle timeout (a balancer's, httpx's 5 s)."""
    config = make_config(tmp_path, read_timeout=0.5, keep_alive_timeout=4.0)
    async with serve_intake(config) as intake:
        host, port = intake.url.removeprefix("http://").rsplit(":", 1)
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream(host, int(port))
            for _ in range(2):
                head, body = raw_delivery(new_job_id())
                await stream.send_all(head + body)
                assert (await _answer(stream)).startswith(b"HTTP/1.1 201")
                await trio.sleep(3 * config.server.read_timeout)  # idle for that long
            head, body = raw_delivery(new_job_id())
            await stream.send_all(head + body)
            assert (await _answer(stream)).startswith(b"HTTP/1.1 201")
            assert await stream.receive_some() == b""  # then idle past keep_alive_timeout
            await stream.aclose()


async def test_request_headers_are_due_within_read_timeout_of_their_first_byte(
    tmp_path: Path,
) -> None:
    """A long keep-alive gives a slow sender no more time for its headers: the first request's
    are due read_timeout after the opening, a later one's after its first byte."""
    config = make_config(tmp_path, read_timeout=0.5, keep_alive_timeout=120.0)
    async with serve_intake(config) as intake:
        host, port = intake.url.removeprefix("http://").rsplit(":", 1)
        with trio.fail_after(20):
            silent = await trio.open_tcp_stream(host, int(port))
            assert await silent.receive_some() == b""  # no request at all: hung up
            await silent.aclose()

            dripping = await trio.open_tcp_stream(host, int(port))
            head, body = raw_delivery(new_job_id())
            await dripping.send_all(head + body)
            assert (await _answer(dripping)).startswith(b"HTTP/1.1 201")
            head, _ = raw_delivery(new_job_id())
            sent = 0
            with pytest.raises(trio.BrokenResourceError):  # cut: the send fails, then EOF
                for sent in range(len(head)):  # a byte every 0.1 s: each read is quick
                    await dripping.send_all(head[sent : sent + 1])
                    await trio.sleep(0.1)
            assert sent < len(head)  # before the headers were all in
            assert await dripping.receive_some() == b""
            await dripping.aclose()


async def test_a_connection_the_sender_closes_leaves_at_once_despite_a_long_keep_alive(
    tmp_path: Path,
) -> None:
    """hypercorn's trio server would keep the socket of a connection its client closed until
    its idle timer ran out (keep_alive_timeout): admission ends it when the reading ends."""
    config = make_config(tmp_path, keep_alive_timeout=120.0)
    admission = Admission(8, header_timeout=config.server.read_timeout)
    async with serve_intake(config, admission=admission) as intake:
        host, port = intake.url.removeprefix("http://").rsplit(":", 1)
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream(host, int(port))
            head, body = raw_delivery(new_job_id())
            await stream.send_all(head + body)
            assert (await _answer(stream)).startswith(b"HTTP/1.1 201")
            assert admission.stats.open == 1
            await stream.aclose()
            while admission.stats.open:  # noqa: ASYNC110 (no event says the server noticed)
                await trio.sleep(0.05)
