"""Reporter benchmark: how fast the outbox drains into check runs on the emulator, unpaced.

    .venv/bin/python bench/reporter.py [--jobs N]

N jobs are queued in a SQLite queue (one outbox entry each); the reporter creates N check runs
(POST), then the jobs finish and it updates them (PATCH), over loopback HTTP to the emulator
served by hypercorn. Pacing is lifted so the figure is gantryd's own cost; in service GitHub's
content-creation limit (80 creations per minute, docs/github.md §7) is the bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import tempfile
import time

import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
)
from agent.emulator import Emulator, serve_emulator
from agent.github.auth import AppAuth
from agent.github.client import GitHubClient
from agent.github.ratelimit import ContentPacer
from agent.github.report_store import open_report_store
from agent.orchestrator.status_reporter import StatusReporter
from agent.queue.base import JobSpec
from agent.queue.sqlite import open_sqlite_queue
from agent.reload import LiveConfig


async def bench(jobs: int) -> tuple[float, float]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emulator = Emulator(app_id=1, app_public_key=key.public_key(), installations={11: ["a/b"]})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_emulator, emulator)
            live = LiveConfig(
                Config(
                    path=workdir / "config.toml",
                    server=ServerConfig(state_dir=workdir),
                    github=GitHubConfig(api_url=url, app_id="1"),
                    queue=QueueConfig(),
                    scheduler=SchedulerConfig(),
                    pools=(PoolConfig(name="default", labels=("self-hosted",)),),
                )
            )
            async with (
                open_sqlite_queue(workdir / "queue.db") as queue,
                open_report_store(workdir / "reporter.db") as store,
                GitHubClient(url, AppAuth(app_id="1", key=key)) as github,
            ):
                ids = []
                for i in range(jobs):
                    job = emulator.create_job("a/b", ["self-hosted"], "true", name=f"j{i}")
                    ids.append(job.id)
                    spec = JobSpec(
                        job_id=job.id,
                        run_id=job.run_id,
                        run_attempt=1,
                        repository="a/b",
                        installation_id=11,
                        labels=("self-hosted",),
                        pool="default",
                        name=job.name,
                        head_sha=job.head_sha,
                    )
                    await queue.enqueue(spec)
                reporter = StatusReporter(
                    queue=queue,
                    github=github,
                    live=live,
                    instance="bench",
                    pacer=ContentPacer(per_minute=10**9, per_hour=10**9),
                )
                started = time.perf_counter()
                while await reporter.drain_once(store):
                    pass
                create = jobs / (time.perf_counter() - started)
                for job_id in ids:
                    await queue.finish(job_id, "success")
                started = time.perf_counter()
                while await reporter.drain_once(store):
                    pass
                update = jobs / (time.perf_counter() - started)
            assert len(emulator.checks.runs) == jobs
            nursery.cancel_scope.cancel()
    return create, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    create, update = trio.run(bench, args.jobs)
    print(f"reporter: {args.jobs} check runs created at {create:.0f}/s, updated at {update:.0f}/s")


if __name__ == "__main__":
    main()
