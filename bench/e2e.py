"""End to end: N trivial jobs through the GitHub stand-in and a real ``gantryd serve``, beside a
docker-py loop running the same containers at the same concurrency, in one run.

    .venv/bin/python bench/e2e.py [--jobs 40] [--runners 4 8] [--profile OUT.txt]

For each runner count R: gantryd (a subprocess, max_runners = concurrency = R) gets N jobs
(script ``true``) created on the stand-in (in this process), one after the other; timed until
the last completes. Figures: jobs/min; p50/p95 from the ``queued`` webhook's arrival at gantryd
(the queue row's ``enqueued_at``, read from its SQLite file afterwards) to the job's start on its
runner (the stand-in's ``started_at``); gantryd's CPU ms per job (utime+stime of its process from
/proc over the run, and of its trio thread apart; ``--profile`` adds a py-spy record of it over
the same window, summarised by bench/pyspy_summary.py); this process's CPU apart (the stand-in
plays GitHub, and drives the run: not gantryd's cost). Baseline: R threads doing docker-py
create + start + wait + remove of the same image running ``true``, N containers in all (latency
from the loop's start: all N wait at once, as the N jobs do), and its CPU per container:
docker-py's own cost, a floor for any client of the Engine. Where a job's runner slot goes:
the slot per job (R x elapsed / N) of each, the runner's own session with the stand-in (job
started -> completed) and the medians of each container's create -> start -> die -> destroy,
from Docker's event stream. Everything labelled with the run's instance is removed at the end
and checked: exit status 1, with the list, if anything is left.
"""

from __future__ import annotations

import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time

import docker
import httpx
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.container.docker_api import INSTANCE_LABEL
from agent.demo import DEMO_REPOSITORIES, RUNNER_IMAGE, demo_emulator, write_demo_config
from agent.emulator.server import serve_emulator
from bench.support import BENCH_LABEL, cpu_seconds, free_port, leftovers, remove_instance


def quantile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1]


def docker_py_loop(jobs: int, runners: int, tag: str) -> tuple[float, list[float]]:
    """(seconds for all, loop start -> started per container: all N are "queued" at once, as
    the N jobs are for gantryd), ``runners`` threads at a time."""
    client = docker.from_env()
    left = iter(range(jobs))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            c = client.containers.create(
                RUNNER_IMAGE, ["true"], network_mode="host", labels={BENCH_LABEL: tag}
            )
            c.start()
            up = time.perf_counter() - t0
            c.wait()
            c.remove(force=True)
            with lock:
                latencies.append(up)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


class Timeline:
    """Docker's create/start/die/destroy times of the containers labelled ``label`` (key=value),
    read by a ``docker events`` process running meanwhile (a process of its own, so this one's
    CPU figures stay clean). ``stop()`` ends it and returns the medians, in seconds, of each
    step of the containers seen through all four."""

    STEPS = (("create", "start"), ("start", "die"), ("die", "destroy"), ("create", "destroy"))

    def __init__(self, label: str) -> None:
        filters = ["--filter", "type=container", "--filter", f"label={label}"]
        self._proc = subprocess.Popen(
            ["docker", "events", *filters, "--format", "{{json .}}"],
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict[str, float]:
        time.sleep(1)  # the Engine's last events reach the stream (no event to wait on)
        self._proc.terminate()
        out, _ = self._proc.communicate()
        times: dict[str, dict[str, float]] = {}
        for line in out.splitlines():
            event = json.loads(line)
            action = event["Action"].split(":")[0]
            times.setdefault(event["Actor"]["ID"], {})[action] = event["timeNano"] / 1e9
        full = [t for t in times.values() if all(k in t for k in ("create", "die", "destroy"))]
        return {
            f"{a}->{b}": statistics.median(t[b] - t[a] for t in full) if full else 0.0
            for a, b in self.STEPS
        }


def py_spy_command(pid: int, out: Path) -> list[str]:
    """py-spy sampling the daemon at 250 Hz into ``out`` (``.json``: speedscope, else raw
    collapsed stacks), only samples of the thread holding the GIL (``--gil``): py-spy's idle
    detection counts threads blocked in a lock or a socket read as busy, the GIL holder is the
    one spending the process's CPU. Needs root or ptrace rights."""
    fmt = "speedscope" if out.suffix == ".json" else "raw"
    spy = Path(sys.executable).with_name("py-spy")
    options = ["--rate", "250", "--gil", "--format", fmt, "--output", str(out)]
    return [str(spy), "record", "--pid", str(pid), *options]


async def through_gantryd(
    jobs: int, runners: int, instance: str, profile: Path | None = None
) -> dict[str, float]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = secrets.token_hex(20)
    emulator = demo_emulator(key, DEMO_REPOSITORIES)
    with tempfile.TemporaryDirectory(prefix="gantryd-e2e-") as tmp:
        workdir = Path(tmp)
        async with trio.open_nursery() as nursery:
            api_url = await nursery.start(serve_emulator, emulator)
            port = free_port()
            config = write_demo_config(
                workdir,
                api_url=api_url,
                key=key,
                webhook_secret=secret,
                instance=instance,
                extra_pool=f"max_runners = {runners}",
            )
            text = config.read_text()
            text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1)
            text = text.replace(
                "max_runners = 4\nconcurrency = 4\n",
                f"max_runners = {runners}\nconcurrency = {runners}\n",
                1,
            )
            text = text.replace("instance = ", 'log_level = "warning"\ninstance = ', 1)
            config.write_text(text)
            gantryd = await trio.lowlevel.open_process(
                [sys.executable, "-m", "agent", "serve", "--config", str(config)],
                stderr=subprocess.DEVNULL,
            )
            try:
                with trio.fail_after(60):
                    while True:
                        try:
                            async with httpx.AsyncClient() as http:
                                if (await http.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                                    break
                        except httpx.TransportError:
                            await trio.sleep(0.2)  # start-up poll, bounded by the deadline
                emulator.add_hook(f"http://127.0.0.1:{port}/webhook", secret)
                await trio.sleep(2)  # start-up work (GC pass, first samples) out of the window
                spy = None
                if profile is not None:
                    spy = await trio.lowlevel.open_process(py_spy_command(gantryd.pid, profile))
                    await trio.sleep(1)  # py-spy attaches
                main = f"{gantryd.pid}/task/{gantryd.pid}"  # the trio thread
                loop0 = cpu_seconds(main)
                cpu0, own0, t0 = cpu_seconds(gantryd.pid), cpu_seconds("self"), time.perf_counter()
                ids = [
                    emulator.create_job(DEMO_REPOSITORIES[0], ["self-hosted"], "true").id
                    for _ in range(jobs)
                ]
                with trio.fail_after(600):
                    for job_id in ids:
                        await emulator.wait_job(job_id, "completed")
                elapsed = time.perf_counter() - t0
                cpu, own = cpu_seconds(gantryd.pid) - cpu0, cpu_seconds("self") - own0
                loop = cpu_seconds(main) - loop0
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    with trio.fail_after(30):
                        await spy.wait()
            finally:
                gantryd.send_signal(signal.SIGTERM)
                with trio.move_on_after(30):
                    await gantryd.wait()
                nursery.cancel_scope.cancel()
        db = sqlite3.connect(workdir / "queue.db")
        arrived = dict(db.execute("SELECT job_id, enqueued_at FROM jobs").fetchall())
        db.close()
    latency = [(emulator.job(i).started_at or 0.0) - arrived[i] for i in ids]
    session = [
        (emulator.job(i).completed_at or 0.0) - (emulator.job(i).started_at or 0.0) for i in ids
    ]
    return {
        "jobs/min": jobs / elapsed * 60,
        "p50": quantile(latency, 0.5),
        "p95": quantile(latency, 0.95),
        "session": statistics.median(session),
        "slot": runners * elapsed / jobs,
        "gantryd CPU ms/job": cpu / jobs * 1000,
        "of which the trio thread": loop / jobs * 1000,
        "this process (stand-in) CPU ms/job": own / jobs * 1000,
    }


async def measure(jobs: int, runner_counts: list[int], profile: Path | None) -> int:
    load = os.getloadavg()
    client = docker.from_env()
    tag = f"e2e-{secrets.token_hex(3)}"
    daemon_left: list[str] = []
    print(f"e2e benchmark: {jobs} jobs (script `true`), image {RUNNER_IMAGE}")
    for runners in runner_counts:
        instance = f"{tag}-{runners}"
        base_steps = Timeline(f"{BENCH_LABEL}={tag}")
        own0 = cpu_seconds("self")
        base_s, base_lat = await trio.to_thread.run_sync(docker_py_loop, jobs, runners, tag)
        base_cpu = cpu_seconds("self") - own0
        base_lives = await trio.to_thread.run_sync(base_steps.stop)
        out = None if profile is None else profile.with_stem(f"{profile.stem}-{runners}")
        our_steps = Timeline(f"{INSTANCE_LABEL}={instance}")
        ours = await through_gantryd(jobs, runners, instance, out)
        our_lives = await trio.to_thread.run_sync(our_steps.stop)
        daemon_left += remove_instance(client, instance)
        base_rate = jobs / base_s * 60
        print(f"\n{runners} runners")
        print(
            f"  jobs/min: gantryd {ours['jobs/min']:.0f}, docker-py loop {base_rate:.0f} "
            f"= {ours['jobs/min'] / base_rate:.2f}x (target >= 0.9x)"
        )
        print(
            f"  webhook arrival -> job started: p50 {ours['p50'] * 1000:.0f} ms, "
            f"p95 {ours['p95'] * 1000:.0f} ms; docker-py loop start -> started p50 "
            f"{statistics.median(base_lat) * 1000:.0f} ms, "
            f"p95 {quantile(base_lat, 0.95) * 1000:.0f} ms"
        )
        print(
            f"  a runner slot per job: gantryd {ours['slot'] * 1000:.0f} ms, docker-py loop "
            f"{runners * base_s / jobs * 1000:.0f} ms; of gantryd's, the runner's own session "
            f"with the stand-in (job started -> completed) p50 {ours['session'] * 1000:.0f} ms"
        )
        print(
            "  container steps, medians (gantryd / docker-py loop): "
            + ", ".join(
                f"{step} {our_lives[step] * 1000:.0f} / {base_lives[step] * 1000:.0f} ms"
                for step in our_lives
            )
        )
        print(
            f"  gantryd CPU {ours['gantryd CPU ms/job']:.1f} ms/job (target <= 20; "
            f"{ours['of which the trio thread']:.1f} on its trio thread, the rest on worker "
            "threads: docker-py, SQLite); "
            "stand-in + driver (this process) "
            f"{ours['this process (stand-in) CPU ms/job']:.1f} ms/job; docker-py loop "
            f"{base_cpu / jobs * 1000:.1f} ms/container"
        )
    print(f"\nload average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if daemon_left:
        print("gantryd left these after SIGTERM (now removed):", *daemon_left, sep="\n  ")
    left = [
        name for runners in runner_counts for name in leftovers(client, f"{tag}-{runners}", tag)
    ]
    if left:
        print("left on the engine:", *left, sep="\n  ")
        return 1
    print(f"nothing left on the engine (instances {tag}-*, label {BENCH_LABEL}={tag})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--runners", type=int, nargs="+", default=[4, 8])
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the daemon over the timed window into PROFILE-<runners>.txt|.json "
        "(adds py-spy's own cost to the machine; take figures from runs without it)",
    )
    args = parser.parse_args()
    sys.exit(trio.run(measure, args.jobs, args.runners, args.profile))


if __name__ == "__main__":
    main()
