"""Dispatch benchmark: webhook -> runner container running, beside a raw ``docker run``, one run.

    .venv/bin/python bench/dispatch.py [--runs N]

Needs the Docker Engine and the stand-in runner image (images/runner/build.sh). Three figures,
samples interleaved so both sides see the same machine state:

- cold: the emulator queues a job (its signed ``queued`` webhook goes to gantryd, which enqueues,
  claims, registers a JIT runner, creates and starts the container) until gantryd has started the
  runner container; baseline: ``docker run -d`` of the same image (returns once it has started).
- warm: with ``min_idle = 1``, the job is queued while a warm runner waits; time until GitHub (the
  stand-in) has given it to that runner (``in_progress``), no container start on the way.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and bench/job_queue.py would shadow the standard
# library's queue module: put the repository root there instead.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import statistics
import subprocess
import tempfile
import time

import trio

from agent.container.lifecycle import RunnerState
from agent.container.pool_manager import PoolManager
from agent.demo import RUNNER_IMAGE, demo_stack

WARM_POOL = 'min_idle = 1\nwarm_repositories = ["octo-org/lib"]\n'


def raw_docker_run() -> float:
    started = time.perf_counter()
    out = subprocess.run(
        ["docker", "run", "-d", "--network", "host", RUNNER_IMAGE, "sleep", "30"],
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    subprocess.run(["docker", "rm", "-f", out.stdout.strip()], check=True, capture_output=True)
    return elapsed


async def started_at(pools: PoolManager, job_id: int) -> float:
    """When gantryd saw the job's runner container started (the runner's own timestamp: it
    moves to IDLE as soon as Docker's start call returns)."""

    def started() -> list[float]:
        return [
            r.state_since
            for r in pools.runners()
            if r.made_for == job_id and r.state not in (RunnerState.CREATING, RunnerState.STARTING)
        ]

    await pools.wait_until(lambda: bool(started()))
    return started()[0]


async def measure(runs: int) -> None:
    cold: list[float] = []
    raw: list[float] = []
    warm: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gantryd-bench-") as tmp:
        async with demo_stack(Path(tmp), extra_pool=WARM_POOL) as stack:
            pools = stack.daemon.pools
            assert pools is not None
            emulator = stack.emulator
            for _ in range(runs):
                raw.append(await trio.to_thread.run_sync(raw_docker_run))
                started = time.time()  # the clock the runner's state_since comes from
                job = emulator.create_job("octo-org/app", ["self-hosted"], "sleep 2")
                with trio.fail_after(60):
                    cold.append(await started_at(pools, job.id) - started)
                    # a warm runner is waiting again
                    await pools.wait_until(
                        lambda: any(r.warm and r.state is RunnerState.IDLE for r in pools.runners())
                    )
                started = time.perf_counter()
                job = emulator.create_job("octo-org/lib", ["self-hosted"], "true")
                with trio.fail_after(60):
                    await emulator.wait_job(job.id, "in_progress")
                warm.append(time.perf_counter() - started)
            with trio.fail_after(120):
                await pools.wait_until(lambda: all(r.warm for r in pools.runners()))

    def show(name: str, samples: list[float]) -> float:
        median = statistics.median(samples)
        print(f"{name:<44} median {median * 1000:7.1f} ms   min {min(samples) * 1000:7.1f} ms")
        return median

    print(f"dispatch benchmark, {runs} runs each, image {RUNNER_IMAGE}")
    base = show("raw docker run -d (baseline)", raw)
    ours = show("webhook -> runner container running (cold)", cold)
    show("webhook -> job taken by a warm runner", warm)
    print(f"cold / raw docker run = {ours / base:.2f}x (target <= 1.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    trio.run(measure, args.runs)


if __name__ == "__main__":
    main()
