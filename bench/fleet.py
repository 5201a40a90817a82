"""A fleet: jobs/min of a 60-job burst on one gantryd host and on two hosts sharing Redis (each
with half the runner cap), in one run, and the Redis commands each job costs.

    .venv/bin/python bench/fleet.py [--jobs 60] [--runners 4] [--rounds 2]

Each round runs both layouts one after the other (alternating which goes first), each on a fresh
redis-server, emulator and daemons (``tests/fleet/fleet_stack.py``: each host in a network
namespace of its own, on 127.0.0.2, .3 where namespaces cannot be made; each its own state dir
and instance; every webhook goes to a host chosen at random). One host: queue
on Redis, ``max_runners = concurrency = R``; two hosts: R/2 each. Jobs run ``true`` in the
stand-in runner image, spread over 3 repositories; timed from the first job's creation to the
last ``completed``. Redis cost: the delta of ``INFO commandstats`` over the burst divided by the
jobs: every command the server executed, the ones inside Lua scripts included, and the idle
blocking reads (one ``XREADGROUP`` per host per second, ``BLPOP`` of the schedulers); the
``EVALSHA`` share is one round trip each (a pipelined batch of them is one round trip for all).
Containers of the run's instances still present a minute after the burst are listed and the exit
status is 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import collections
import contextlib
import os
import statistics
import tempfile
import time

import trio

from tests.fleet.fleet_stack import Fleet, fleet, until


def commandstats(stack: Fleet) -> collections.Counter[str]:
    client = stack.redis.client()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return collections.Counter(
        {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    )


async def burst(hosts: int, jobs: int, runners: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="gantryd-fleet-") as tmp:
        async with fleet(Path(tmp), hosts=hosts, max_runners=runners // hosts) as stack:
            await trio.sleep(2)  # start-up work (GC pass, first sweep) out of the window
            before = commandstats(stack)
            t0 = time.perf_counter()
            ids = stack.create_jobs(jobs)
            with trio.fail_after(900):
                for job_id in ids:
                    await stack.emulator.wait_job(job_id, "completed")
            elapsed = time.perf_counter() - t0
            used = commandstats(stack) - before
            used["info"] -= 1  # this benchmark's own INFO
            left: list[str] = []
            with contextlib.suppress(AssertionError):  # what is left is listed below
                await until(
                    lambda: not any(stack.containers(h) for h in stack.hosts),
                    "no runner container left",
                    deadline=60,
                )
            for host in stack.hosts:
                left += [f"{host.instance}: {c}" for c in stack.containers(host)]
    return {"rate": jobs / elapsed * 60, "commands": used, "left": left}


async def measure(jobs: int, runners: int, rounds: int) -> int:
    load = os.getloadavg()
    print(f"fleet benchmark: {jobs} jobs (`true`, 3 repositories), runner cap {runners} in all")
    rates: dict[int, list[float]] = {1: [], 2: []}
    per_job: dict[int, list[float]] = {1: [], 2: []}
    left: list[str] = []
    for r in range(rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        for hosts in order:
            result = await burst(hosts, jobs, runners)
            used = result["commands"]
            assert isinstance(used, collections.Counter)
            rate = float(result["rate"])  # type: ignore[arg-type]
            rates[hosts].append(rate)
            per_job[hosts].append(sum(used.values()) / jobs)
            left += result["left"]  # type: ignore[arg-type]
            top = ", ".join(f"{n} {c / jobs:.1f}" for n, c in used.most_common(6))
            print(
                f"  round {r + 1}, {hosts} host(s) x {runners // hosts} runners: "
                f"{rate:.0f} jobs/min; Redis commands/job {sum(used.values()) / jobs:.1f} "
                f"(evalsha {used['evalsha'] / jobs:.1f}; top: {top})"
            )
    for hosts in (1, 2):
        print(
            f"{hosts} host(s): median {statistics.median(rates[hosts]):.0f} jobs/min, "
            f"{statistics.median(per_job[hosts]):.1f} Redis commands/job"
        )
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"two hosts / one host: {ratio:.2f}x jobs/min")
    print(f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if left:
        print("left on the engine a minute after the burst:", *left, sep="\n  ")
        return 1
    print("nothing left on the engine")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--runners", type=int, default=4, help="runner cap over all hosts")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.exit(trio.run(measure, args.jobs, args.runners, args.rounds))


if __name__ == "__main__":
    main()
