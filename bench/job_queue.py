"""Queue benchmark: gantryd's SQLite and Redis backends beside a raw sqlite3 baseline.

    .venv/bin/python bench/job_queue.py [--quick] [--runs N] [--synchronous full|normal]
                                    [--redis-url URL]

Without ``--redis-url`` a throw-away redis-server (AOF everysec, noeviction) is started on a free
loopback port in a temporary directory. The raw baseline is a plain INSERT / UPDATE loop with the
same pragmas (WAL, same ``synchronous``), a partial index on ready rows and one commit per
operation (per batch in the ``ack_many`` row), so the ratio shows what gantryd's bookkeeping
(dedupe, outbox, leases, threads) costs. ``--runs N`` repeats everything and reports the median
and the range of each cell: on a shared machine fsync times swing by 2x and more.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path and "queue.py" would shadow the
# standard library's queue module (used by trio and redis-py): put the repository root there.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import trio

from agent.queue.base import JobSpec
from agent.queue.redis import RedisQueue, open_redis_queue
from agent.queue.sqlite import SQLiteQueue, open_sqlite_queue

LEASE = 300.0
Result = dict[str, float]


@dataclass(frozen=True)
class Sizes:
    ops: int  # operations per throughput row
    probes: int  # claims timed per backlog
    backlogs: tuple[int, ...]


def job(job_id: int) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        run_id=job_id,
        run_attempt=1,
        repository="octo/repo",
        installation_id=1,
        labels=("self-hosted", "linux", "x64"),
        pool="linux",
        priority=job_id % 3,
        name="build",
        workflow_name="CI",
        head_sha="0" * 40,
        head_branch="main",
        html_url="https://github.com/octo/repo/actions/runs/1/job/2",
    )


def rate(n: int, seconds: float) -> float:
    return n / seconds


async def enqueue_range(q: SQLiteQueue | RedisQueue, ids: range) -> None:
    for i in ids:
        await q.enqueue(job(i), delivery_id=f"d{i}")


async def claim_ack_until_empty(q: SQLiteQueue | RedisQueue) -> None:
    while leases := await q.claim(1, lease_seconds=LEASE):
        await q.ack(leases[0])


async def bench_queue(q: SQLiteQueue | RedisQueue, sizes: Sizes) -> Result:
    out: Result = {}
    n = sizes.ops
    t = time.perf_counter()
    for i in range(n):
        await q.enqueue(job(i), delivery_id=f"d{i}")
    out["enqueue/s"] = rate(n, time.perf_counter() - t)

    t = time.perf_counter()
    for _ in range(n):
        [lease] = await q.claim(1, lease_seconds=LEASE)
        await q.ack(lease)
    out["claim+ack/s"] = rate(n, time.perf_counter() - t)

    await q.enqueue_many([job(i) for i in range(n, 3 * n)])
    t = time.perf_counter()
    done = 0
    while leases := await q.claim(100, lease_seconds=LEASE):
        await q.ack_many(leases)
        done += len(leases)
    out["claim100+ack_many/s"] = rate(done, time.perf_counter() - t)

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(8):  # like intake: concurrent deliveries share commits
            nursery.start_soon(enqueue_range, q, range(3 * n + task, 5 * n, 8))
    out["enqueue/s 8 tasks"] = rate(2 * n, time.perf_counter() - t)
    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(claim_ack_until_empty, q)
    out["claim+ack/s 8 tasks"] = rate(2 * n, time.perf_counter() - t)

    next_id = 5 * n
    for backlog in sizes.backlogs:
        counts = await q.counts()
        have = sum(counts.ready_by_pool_priority.values())
        for start in range(next_id, next_id + backlog - have, 5000):
            stop = min(start + 5000, next_id + backlog - have)
            await q.enqueue_many([job(i) for i in range(start, stop)])
        next_id += backlog - have
        latencies = []
        for _ in range(sizes.probes):
            t = time.perf_counter()
            [lease] = await q.claim(1, lease_seconds=LEASE)
            latencies.append(time.perf_counter() - t)
            await q.release(lease)
        out[f"claim @{backlog // 1000}k ms"] = statistics.median(latencies) * 1000
    return out


def bench_raw(path: Path, synchronous: str, sizes: Sizes) -> Result:
    """The baseline: the same operations as plain statements, one commit each (or per batch)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, priority INTEGER, seq INTEGER, "
        "state TEXT, payload TEXT)"
    )
    conn.execute("CREATE INDEX ready ON jobs (priority DESC, seq) WHERE state = 'queued'")
    payload = repr(job(0))
    claim = (
        "UPDATE jobs SET state = 'claimed' WHERE id IN (SELECT id FROM jobs WHERE "
        "state = 'queued' ORDER BY priority DESC, seq LIMIT ?) RETURNING id"
    )

    def tx(sql: str, args: tuple[Any, ...]) -> list[Any]:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(sql, args).fetchall()
        conn.execute("COMMIT")
        return rows

    def fill(start: int, stop: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO jobs VALUES (?, ?, ?, 'queued', ?)",
            ((i, i % 3, i, payload) for i in range(start, stop)),
        )
        conn.execute("COMMIT")

    out: Result = {}
    n = sizes.ops
    t = time.perf_counter()
    for i in range(n):
        tx("INSERT INTO jobs VALUES (?, ?, ?, 'queued', ?)", (i, i % 3, i, payload))
    out["enqueue/s"] = rate(n, time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n):
        [(job_id,)] = tx(claim, (1,))
        tx("UPDATE jobs SET state = 'done' WHERE id = ?", (job_id,))
    out["claim+ack/s"] = rate(n, time.perf_counter() - t)
    fill(n, 3 * n)
    t = time.perf_counter()
    done = 0
    while rows := tx(claim, (100,)):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE jobs SET state = 'done' WHERE id = ?", rows)
        conn.execute("COMMIT")
        done += len(rows)
    out["claim100+ack_many/s"] = rate(done, time.perf_counter() - t)
    next_id = 3 * n
    for backlog in sizes.backlogs:
        have = conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
        fill(next_id, next_id + backlog - have)
        next_id += backlog - have
        latencies = []
        for _ in range(sizes.probes):
            t = time.perf_counter()
            [(job_id,)] = tx(claim, (1,))
            latencies.append(time.perf_counter() - t)
            tx("UPDATE jobs SET state = 'queued' WHERE id = ?", (job_id,))
        out[f"claim @{backlog // 1000}k ms"] = statistics.median(latencies) * 1000
    conn.close()
    return out


@contextmanager
def throwaway_redis(directory: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
         "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait()


def summary(values: list[float]) -> str:
    """Median of the runs, and their range when there were several."""
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:,.2f}"
    digits = 2 if median < 100 else 0  # latencies in ms keep their decimals
    return f"{median:,.2f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def table(runs: list[dict[str, Result]]) -> str:
    names = list(runs[0])
    rows = list(dict.fromkeys(row for result in runs[0].values() for row in result))
    cells = {
        (row, name): summary([run[name][row] for run in runs]) if row in runs[0][name] else "-"
        for row in rows
        for name in names
    }
    widths = {name: max(len(name), *(len(cells[row, name]) for row in rows)) for name in names}
    width = max(len(r) for r in rows)
    lines = [f"| {'':{width}} | " + " | ".join(f"{n:>{widths[n]}}" for n in names) + " |"]
    lines.append(f"|{'-' * (width + 2)}|" + "|".join("-" * (widths[n] + 2) for n in names) + "|")
    for row in rows:
        line = " | ".join(f"{cells[row, n]:>{widths[n]}}" for n in names)
        lines.append(f"| {row:{width}} | {line} |")
    return "\n".join(lines)


async def one_run(args: argparse.Namespace, redis_url: str, sizes: Sizes) -> dict[str, Result]:
    columns: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        columns[f"raw sqlite3 {args.synchronous}"] = await trio.to_thread.run_sync(
            bench_raw, d / "raw.db", args.synchronous, sizes
        )
        async with open_sqlite_queue(d / "queue.db", synchronous=args.synchronous) as q:
            columns[f"gantryd sqlite {args.synchronous}"] = await bench_queue(q, sizes)
        async with open_redis_queue(redis_url, prefix=f"bench{time.time_ns()}") as rq:
            columns["gantryd redis"] = await bench_queue(rq, sizes)
    return columns


async def main(args: argparse.Namespace, redis_url: str) -> None:
    sizes = Sizes(
        ops=500 if args.quick else 4000,
        probes=50 if args.quick else 300,
        backlogs=(1000, 10_000) if args.quick else (1000, 10_000, 100_000),
    )
    runs = []
    for i in range(args.runs):
        before = os.getloadavg()[0]
        runs.append(await one_run(args, redis_url, sizes))
        print(f"run {i + 1}/{args.runs}: load average {before:.2f} -> {os.getloadavg()[0]:.2f}")
    print(table(runs))
    print(f"\n{'median (min-max) of ' + str(args.runs) + ' runs; ' if args.runs > 1 else ''}"
          "ratios of the medians:")  # fmt: skip
    med = {
        name: {row: statistics.median(run[name][row] for run in runs) for row in runs[0][name]}
        for name in runs[0]
    }
    sq = med[f"gantryd sqlite {args.synchronous}"]
    big = "claim @100k ms" if "claim @100k ms" in sq else "claim @10k ms"
    print(f"sqlite claim latency {big.split()[1]} / @1k: {sq[big] / sq['claim @1k ms']:.2f}x")
    raw = med[f"raw sqlite3 {args.synchronous}"]
    for op in ("enqueue/s", "claim+ack/s", "claim100+ack_many/s"):
        print(f"raw / gantryd sqlite {op}: {raw[op] / sq[op]:.2f}x")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--synchronous", choices=["full", "normal"], default="full")
    p.add_argument("--redis-url", help="use this server instead of a throw-away one")
    p.add_argument("--runs", type=int, default=1, help="repeat, report median and range")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.redis_url:
        trio.run(main, arguments, arguments.redis_url)
    else:
        with tempfile.TemporaryDirectory() as redis_dir, throwaway_redis(Path(redis_dir)) as url:
            trio.run(main, arguments, url)
