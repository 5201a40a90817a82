"""Dispatch benchmark: webhook -> runner container running, beside the engine's own limit, one run.

    .venv/bin/python bench/dispatch.py [--runs N] [--source scale-set]

Needs the Docker Engine and the stand-in runner image (images/runner/build.sh). Samples are
interleaved so every side sees the same machine state, and each is taken on a quiet engine:
before timing, the previous iteration's containers are gone (removals finished) and gantryd has
no job runner left. Figures are ratios to baselines from the same run (the machine is shared):

- limit: docker-py ``create`` + ``start`` of the same image (what any client of the engine pays);
- CLI: ``docker run -d`` (the same plus the CLI's own process start), for reference;
- cold: the ``queued`` webhook's arrival at gantryd (the queue row's ``enqueued_at``, stamped by
  the intake's enqueue) until gantryd has started the runner container; also from the emulator's
  ``create_job`` (includes the stand-in's webhook delivery);
- warm: ``min_idle = 1``: the job's start on the waiting runner (the stand-in's ``started_at``)
  minus the webhook's arrival at gantryd. GitHub (and its stand-in) hands a queued job to an idle
  matching runner itself, so this is usually negative: gantryd is not on a warm hit's path;
- scale-set (``--source scale-set``): a scale-set pool beside the webhook pools in the same
  daemon, a cold job of its own after each webhook cold job: from the delivery of its
  ``JobAvailable`` (the stand-in stamps the poll answer that carries it) until gantryd has
  started the runner container, compared with the webhook's arrival; also from the listener's
  queue commit and from ``create_job``. Its path has steps a webhook has not: acquire, the REST
  lookup of the job by run and name, the JIT config from the scale set.

Everything the run created (baseline containers and the daemon's own runners, warm ones included)
is removed at the end and checked: exit status 1, with the list, if anything is left.
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
import os
import secrets
import statistics
import subprocess
import tempfile
import time

import docker
import trio

from agent.container.lifecycle import RunnerState
from agent.container.pool_manager import PoolManager
from agent.demo import RUNNER_IMAGE, demo_stack
from agent.emulator import Emulator
from agent.queue.base import JobQueue
from bench.support import BENCH_LABEL, leftovers, remove_instance

WARM_POOL = 'min_idle = 1\nwarm_repositories = ["octo-org/lib"]\n'
SCALE_SET_POOL = "scaleset"  # its name, and the label its jobs ask for


def docker_py_start(client: docker.DockerClient, tag: str) -> float:
    """create + start through the engine API; the container is removed (and gone) on return."""
    started = time.perf_counter()
    container = client.containers.create(
        RUNNER_IMAGE, ["sleep", "30"], network_mode="host", labels={BENCH_LABEL: tag}
    )
    container.start()
    elapsed = time.perf_counter() - started
    container.remove(force=True)  # returns once the engine has removed it
    return elapsed


def cli_start(tag: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--network",
            "host",
            "--label",
            f"{BENCH_LABEL}={tag}",
            RUNNER_IMAGE,
            "sleep",
            "30",
        ],
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


def finished_deliveries(emulator: Emulator) -> int:
    return sum(d.status != "pending" for d in emulator.deliveries)


async def arrived_at(emulator: Emulator, queue: JobQueue, job_id: int, before: int) -> float:
    """The ``queued`` webhook's arrival at gantryd: the intake stamps the row when it enqueues
    it. That webhook is the hook's next delivery after the ``before`` finished ones (each hook
    delivers in order), and its 2xx means the row is committed."""
    await emulator.wait_deliveries(before + 1)
    job = await queue.get(job_id)
    assert job is not None, f"job {job_id}: queued webhook answered but no queue row"
    return job.enqueued_at


async def quiet(pools: PoolManager) -> None:
    """Only the warm runner is left and it is waiting: no removal in flight."""
    await pools.wait_until(
        lambda: (
            all(r.warm for r in pools.runners())
            and any(r.warm and r.state is RunnerState.IDLE for r in pools.runners())
        )
    )


def offered_at(emulator: Emulator, job_id: int) -> float:
    """When the job's ``JobAvailable`` was first delivered in a poll answer (stand-in clock)."""
    (request,) = emulator.actions.requests_of(job_id)  # acquired at once: never re-offered
    assert request.offered_at is not None
    return request.offered_at


async def scale_set_cold(
    emulator: Emulator, pools: PoolManager, queue: JobQueue, samples: dict[str, list[float]]
) -> None:
    created = time.time()
    job = emulator.create_job("octo-org/app", [SCALE_SET_POOL], "true")
    with trio.fail_after(60):
        up = await started_at(pools, job.id)
        row = await queue.get(job.id)
        assert row is not None
        samples["ss"].append(up - offered_at(emulator, job.id))
        samples["ss_q"].append(up - row.enqueued_at)
        samples["ss_e"].append(up - created)
        await emulator.wait_job(job.id, "completed")
        await quiet(pools)


async def measure(runs: int, source: str) -> int:
    keys = ("py", "cli", "cold", "cold_e", "warm", "ss", "ss_q", "ss_e")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    scale_set = source == "scale-set"
    client = docker.from_env()
    tag = f"dispatch-{secrets.token_hex(3)}"
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gantryd-bench-") as tmp:
        async with demo_stack(
            Path(tmp),
            extra_pool=WARM_POOL,
            scale_set_pool=SCALE_SET_POOL if scale_set else "",
        ) as stack:
            pools, queue, emulator = stack.daemon.pools, stack.daemon.queue, stack.emulator
            assert pools is not None and queue is not None
            instance = stack.instance
            for _ in range(runs):
                with trio.fail_after(120):
                    await quiet(pools)
                samples["py"].append(await trio.to_thread.run_sync(docker_py_start, client, tag))
                samples["cli"].append(await trio.to_thread.run_sync(cli_start, tag))
                before = finished_deliveries(emulator)
                created = time.time()  # the clock the runner's state_since comes from
                job = emulator.create_job("octo-org/app", ["self-hosted"], "true")
                with trio.fail_after(60):
                    up = await started_at(pools, job.id)
                    samples["cold"].append(up - await arrived_at(emulator, queue, job.id, before))
                    samples["cold_e"].append(up - created)
                    await emulator.wait_job(job.id, "completed")
                    await quiet(pools)
                assert not emulator.actions.requests_of(job.id), "the scale set took a webhook job"
                if scale_set:
                    await scale_set_cold(emulator, pools, queue, samples)
                before = finished_deliveries(emulator)
                job = emulator.create_job("octo-org/lib", ["self-hosted"], "true")
                with trio.fail_after(60):
                    taken = await emulator.wait_job(job.id, "in_progress")
                    assert taken.started_at is not None
                    samples["warm"].append(
                        taken.started_at - await arrived_at(emulator, queue, job.id, before)
                    )
                    await emulator.wait_job(job.id, "completed")
                assert not emulator.actions.requests_of(job.id), "the scale set took a webhook job"
    # The daemon leaves its warm runner behind on shutdown (issue 16): remove it, then check.
    daemon_left = remove_instance(client, instance)
    left = leftovers(client, instance, tag)

    def show(name: str, key: str) -> float:
        median = statistics.median(samples[key])
        print(f"{name:<56} median {median * 1000:8.1f} ms   min {min(samples[key]) * 1000:8.1f} ms")
        return median

    print(f"dispatch benchmark, {runs} runs each, image {RUNNER_IMAGE}")
    print(f"load average at start {load[0]:.2f} {load[1]:.2f}, at end {os.getloadavg()[0]:.2f}")
    limit = show("docker-py create + start (limit)", "py")
    cli = show("docker run -d (CLI)", "cli")
    cold = show("webhook arrival -> runner container started", "cold")
    cold_e = show("emulator create_job -> runner container started", "cold_e")
    warm = show("webhook arrival -> job started on warm runner", "warm")
    print(f"cold (arrival) / docker-py = {cold / limit:.2f}x (target <= 1.1x)")
    print(
        f"cold (create_job) / docker-py = {cold_e / limit:.2f}x, "
        f"CLI / docker-py = {cli / limit:.2f}x"
    )
    if scale_set:
        ss = show("scale set: JobAvailable delivered -> container started", "ss")
        show("scale set: listener's queue commit -> container started", "ss_q")
        ss_e = show("scale set: emulator create_job -> container started", "ss_e")
        print(
            f"scale set (JobAvailable) / webhook cold (arrival) = {ss / cold:.2f}x (target <= 1.2x)"
        )
        print(f"scale set (create_job) / webhook cold (create_job) = {ss_e / cold_e:.2f}x")
    if warm < 0:
        print(
            f"warm: the runner took the job {-warm * 1000:.1f} ms before the webhook "
            "reached gantryd (GitHub hands it over, gantryd is not on the path)"
        )
    if daemon_left:
        print("gantryd left these on shutdown (now removed):", *daemon_left, sep="\n  ")
    if left:
        print("left on the engine:", *left, sep="\n  ")
        return 1
    print(f"nothing left on the engine (instance {instance}, label {BENCH_LABEL}={tag})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--source",
        choices=("webhook", "scale-set"),
        default="webhook",
        help="scale-set: also measure a scale-set pool's cold dispatch, beside the webhook's",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(trio.run(measure, args.runs, args.source))


if __name__ == "__main__":
    main()
