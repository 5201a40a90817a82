"""SIGKILL a process working the queue at random moments; nothing accepted is lost or doubled.

Rounds per backend: 20, or ``GANTRYD_CHAOS_ROUNDS`` (``make chaos``).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from agent.queue.base import JobState
from agent.queue.redis import open_redis_queue
from agent.queue.sqlite import open_sqlite_queue
from tests.queue.queue_support import RedisServer

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ROUNDS = int(os.environ.get("GANTRYD_CHAOS_ROUNDS", "20"))
LEASE = 30.0  # crash_child.LEASE


async def start_child(*args: str) -> trio.Process:
    """Start crash_child.py and wait (with a deadline) until its queue is open."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "crash_child.py"), *args], stdin=-1, stdout=-1, env=env
    )
    assert proc.stdout is not None
    with trio.fail_after(30):
        assert (await proc.stdout.receive_some(100)).startswith(b"ready")
    return proc


async def close(proc: trio.Process) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            await stream.aclose()


def fixed(now: float) -> Callable[[], float]:
    return lambda: now


def read_log(log: Path) -> tuple[set[int], set[int], set[int]]:
    entries: dict[str, set[int]] = {"E": set(), "A": set(), "C": set()}
    for line in log.read_text().splitlines():
        kind, _, job_id = line.partition(" ")
        if job_id:  # a line cut by the kill has no id; everything before it is whole
            entries[kind].add(int(job_id))
    return entries["E"], entries["A"], entries["C"]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_sigkill_loses_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    prefix = uuid.uuid4().hex
    if backend == "sqlite":
        target = str(tmp_path / "queue.db")
    else:
        target = request.getfixturevalue("redis_server").url
    reclaimed_total = 0
    for round_ in range(ROUNDS):
        log = tmp_path / f"log{round_}"
        proc = await start_child("loop", backend, target, prefix, str(log), str(round_ * 10**6))
        try:
            await trio.sleep(random.uniform(0.01, 0.3))  # the random moment of the kill
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await close(proc)
        enqueued, acked, unacked = read_log(log)

        later = fixed(time.time() + LEASE + 1)  # every lease the child held has expired
        opener = (
            open_sqlite_queue(target, clock=later)
            if backend == "sqlite"
            else open_redis_queue(target, prefix=prefix, clock=later)
        )
        async with opener as queue:
            for job_id in enqueued:
                job = await queue.get(job_id)
                assert job is not None, f"round {round_}: accepted job {job_id} is missing"
            for job_id in acked:
                job = await queue.get(job_id)
                assert job is not None and job.state is JobState.DONE
            reclaimed: list[int] = []
            while leases := await queue.claim(500, lease_seconds=LEASE):
                reclaimed.extend(lease.job_id for lease in leases)
                for lease in leases:
                    await queue.ack(lease)
            assert len(reclaimed) == len(set(reclaimed)), "a job was leased twice"
            assert not set(reclaimed) & acked, "an acked job came back"
            assert unacked - acked <= set(reclaimed), "a claimed job did not come back"
            counts = await queue.counts()
            assert set(counts.by_state) <= {JobState.DONE}
        reclaimed_total += len(reclaimed)
    assert reclaimed_total > 0  # the kills did land with unacked claims


async def test_two_processes_never_share_a_redis_job(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from tests.queue.queue_support import spec

    prefix = uuid.uuid4().hex
    async with open_redis_queue(redis_server.url, prefix=prefix) as queue:
        for job_id in range(2000):
            await queue.enqueue(spec(job_id))
    logs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        await start_child("drain", "redis", redis_server.url, prefix, str(log), "0") for log in logs
    ]
    for proc in procs:  # both are open: let them race (a head start could drain it all)
        assert proc.stdin is not None
        await proc.stdin.send_all(b"go\n")
    with trio.fail_after(60):
        for proc in procs:
            assert await proc.wait() == 0
            await close(proc)
    first, second = (read_log(log)[1] for log in logs)
    assert not first & second
    assert first | second == set(range(2000))
    assert first and second  # both took part
