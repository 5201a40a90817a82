"""Backlog benchmark: what a queued backlog costs the SQLite queue, at 1k, 10k and 100k queued.

    .venv/bin/python bench/backlog.py [--backlogs 1000 10000 100000] [--idle 10]

Each backlog is a fresh file at ``synchronous=FULL``, filled fast with ``enqueue_many`` in
batches (one transaction each), all in pool ``big``. Then, on that backlog:

- enqueue p50: one job at a time with a delivery id, as the intake does;
- claim for the backlog's pool (one job, then released), for another pool with nothing ready
  (the scheduler's claim for every pool with free slots), for a paused pool (``big`` paused);
- idle CPU: the daemon's idle queue load over ``--idle`` seconds (a claim for a pool with free
  slots and nothing ready every second, ``counts`` every 5 s for metrics), as % of one core from
  this process's /proc/self/stat; RSS from /proc/self/status at the end.

Everything is printed beside the first (1k) backlog's figure from the same run, as ratios: the
machine is shared, only ratios mean something.
"""

from __future__ import annotations

import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import statistics
import tempfile
import time

import trio

from agent.queue.base import JobSpec
from agent.queue.sqlite import SQLiteQueue, open_sqlite_queue
from bench.support import cpu_seconds, rss_mib

BATCH = 5000
PROBES = 30
LEASE = 300.0


def spec(job_id: int, pool: str = "big") -> JobSpec:
    return JobSpec(
        job_id=job_id,
        run_id=job_id,
        run_attempt=1,
        repository="octo/repo",
        installation_id=1,
        labels=("self-hosted", "linux"),
        pool=pool,
        priority=job_id % 3,
        name="build",
        workflow_name="CI",
        head_sha="0" * 40,
        head_branch="main",
        html_url="https://github.com/octo/repo/actions/runs/1/job/2",
    )


async def timed(fn: object, probes: int = PROBES) -> float:
    """Median seconds of ``await fn()`` over ``probes`` calls."""
    samples = []
    for _ in range(probes):
        started = time.perf_counter()
        await fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def one_backlog(size: int, idle: float) -> dict[str, float]:
    row: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gantryd-backlog-") as tmp:
        async with open_sqlite_queue(Path(tmp) / "q.db", synchronous="full") as q:
            for start in range(1, size + 1, BATCH):
                await q.enqueue_many([spec(i) for i in range(start, min(start + BATCH, size + 1))])
            next_id = iter(range(size + 1, size + 10_000))

            async def enqueue() -> None:
                i = next(next_id)
                await q.enqueue(spec(i), delivery_id=f"d-{i}")

            async def claim_own() -> None:
                leases = await q.claim(1, lease_seconds=LEASE, pools=["big"])
                assert len(leases) == 1
                await q.release(leases[0])

            async def claim_other() -> None:
                assert not await q.claim(1, lease_seconds=LEASE, pools=["other"])

            async def claim_paused() -> None:
                assert not await q.claim(1, lease_seconds=LEASE, pools=["big"])

            row["enqueue p50"] = await timed(enqueue)
            row["claim, backlog's pool"] = await timed(claim_own)
            row["claim, another pool (empty)"] = await timed(claim_other)
            await q.pause("big")
            row["claim, paused pool"] = await timed(claim_paused)
            row["counts"] = await timed(q.counts, 5)
            row["idle CPU % of a core"] = await idle_cpu(q, idle)
            row["RSS MiB"] = rss_mib()[0]
    return row


async def idle_cpu(q: SQLiteQueue, seconds: float) -> float:
    """The daemon's idle queue load: a claim for an empty pool each second, counts each 5 s."""
    before, started, tick = cpu_seconds(), time.monotonic(), 0
    while time.monotonic() - started < seconds:
        await q.claim(1, lease_seconds=LEASE, pools=["other"])
        if tick % 5 == 0:
            await q.counts()
        tick += 1
        await trio.sleep(1.0)
    return 100 * (cpu_seconds() - before) / (time.monotonic() - started)


async def measure(backlogs: list[int], idle: float) -> None:
    load = os.getloadavg()
    rows = {size: await one_backlog(size, idle) for size in backlogs}
    base = rows[backlogs[0]]
    print(f"backlog benchmark (SQLite, synchronous=FULL), medians of {PROBES} probes")
    print(f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"{'':<30}" + "".join(f"{size:>22,}" for size in backlogs))
    for key in base:
        ms = not key.startswith(("idle", "RSS"))
        cells = []
        for size in backlogs:
            value = rows[size][key] * (1000 if ms else 1)
            ratio = rows[size][key] / base[key] if base[key] else float("nan")
            cells.append(f"{value:10.2f}{' ms' if ms else '   '} ({ratio:5.2f}x)")
        print(f"{key:<30}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlogs", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    trio.run(measure, args.backlogs, args.idle)


if __name__ == "__main__":
    main()
