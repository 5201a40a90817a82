"""Child process of test_crash.py: works a queue until it is SIGKILLed.

usage: crash_child.py loop|drain BACKEND TARGET PREFIX LOG START

Each line of LOG is written only after the operation it names returned: ``E id`` enqueued,
``A id`` acked, ``C id`` claimed and deliberately left unacked. ``drain`` waits for a line on
stdin (so that two drainers start together), then claims and acks until the queue is empty,
logging ``A id``.
"""

from __future__ import annotations

import os
import random
import sys
from contextlib import AbstractAsyncContextManager

import trio

from agent.queue.base import JobQueue
from agent.queue.redis import open_redis_queue
from agent.queue.sqlite import open_sqlite_queue
from tests.queue.queue_support import spec

LEASE = 30.0


def _open(backend: str, target: str, prefix: str) -> AbstractAsyncContextManager[JobQueue]:
    if backend == "sqlite":
        return open_sqlite_queue(target)
    return open_redis_queue(target, prefix=prefix)


async def main(mode: str, backend: str, target: str, prefix: str, log: str, start: int) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    async with _open(backend, target, prefix) as queue:
        print("ready", flush=True)
        if mode == "drain":
            await trio.to_thread.run_sync(sys.stdin.readline)
            while leases := await queue.claim(10, lease_seconds=LEASE):
                for lease in leases:
                    await queue.ack(lease)
                    os.write(fd, f"A {lease.job_id}\n".encode())
            return
        job_id = start
        while True:
            await queue.enqueue(spec(job_id))
            os.write(fd, f"E {job_id}\n".encode())
            job_id += 1
            for lease in await queue.claim(2, lease_seconds=LEASE):
                if random.random() < 0.7:
                    await queue.ack(lease)
                    os.write(fd, f"A {lease.job_id}\n".encode())
                else:
                    os.write(fd, f"C {lease.job_id}\n".encode())


if __name__ == "__main__":
    mode, backend, target, prefix, log, start = sys.argv[1:]
    trio.run(main, mode, backend, target, prefix, log, int(start))
