"""gantryd's own footprint: RSS and CPU when idle, and with 50 runners and 10k queued jobs.

docs/design.md §8 targets RSS <= 100 MB with 50 runners and 10k queued, idle CPU ~ 0. The baseline,
measured in the same run, is a Python process that imports everything gantryd imports and then
sleeps: what the interpreter and the libraries cost before gantryd does anything.

gantryd runs as a real `gantryd serve` subprocess against the GitHub stand-in (served by this
script) and the real Docker Engine; 10,000 signed `queued` deliveries are posted to its intake,
it provisions runners up to max_runners = 50 (the stand-in has no job for them, so they wait,
connected), and the rest stay queued. Needs root, Docker and the stand-in runner image
(`make setup`). Run: .venv/bin/python bench/footprint.py [--jobs 10000] [--runners 50]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and bench/job_queue.py would shadow the standard
# library's queue module: put the repository root there instead.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import hashlib
import hmac
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.demo import INSTALLATION_ID, demo_emulator, write_demo_config
from agent.emulator.server import serve_emulator
from bench.support import cpu_seconds, free_port, rss_mib

REPOSITORY = "octo-org/app"
IDLE_WINDOW = 10.0  # seconds of CPU accounting per measurement
BASELINE = "import agent.daemon, agent.cli, trio, signal; trio.run(trio.sleep_forever)"


async def cpu_share(pid: int) -> float:
    """Share of one core used over IDLE_WINDOW seconds of wall time."""
    before = cpu_seconds(pid)
    await trio.sleep(IDLE_WINDOW)
    return (cpu_seconds(pid) - before) / IDLE_WINDOW


def payload(job_id: int) -> bytes:
    return json.dumps(
        {
            "action": "queued",
            "workflow_job": {
                "id": job_id,
                "run_id": job_id,
                "run_attempt": 1,
                "name": "bench",
                "workflow_name": "CI",
                "head_sha": "0" * 40,
                "head_branch": "main",
                "html_url": f"https://github.com/{REPOSITORY}/actions/runs/{job_id}",
                "labels": ["self-hosted", "linux"],
                "status": "queued",
                "conclusion": None,
                "runner_name": None,
            },
            "repository": {"full_name": REPOSITORY},
            "installation": {"id": INSTALLATION_ID},
            "sender": {"login": "octocat"},
        }
    ).encode()


async def post_jobs(url: str, secret: str, count: int) -> None:
    """Distinct signed deliveries, 16 at a time; every answer must be 201."""
    send, receive = trio.open_memory_channel[int](0)

    async def worker(client: httpx.AsyncClient, ids: trio.MemoryReceiveChannel[int]) -> None:
        async with ids:
            async for job_id in ids:
                body = payload(job_id)
                signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                response = await client.post(
                    url,
                    content=body,
                    headers={
                        "X-GitHub-Event": "workflow_job",
                        "X-GitHub-Delivery": f"bench-{job_id}",
                        "X-Hub-Signature-256": f"sha256={signature}",
                        "Content-Type": "application/json",
                    },
                )
                if response.status_code != 201:
                    raise RuntimeError(f"job {job_id}: {response.status_code} {response.text}")

    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery, send:
        for _ in range(16):
            nursery.start_soon(worker, client, receive.clone())
        await receive.aclose()
        for job_id in range(9_000_000_000, 9_000_000_000 + count):
            await send.send(job_id)


def running_runners(client: docker.DockerClient, instance: str) -> int:
    return len(
        client.containers.list(
            filters={
                "label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"],
                "status": "running",
            }
        )
    )


async def measure(jobs: int, runners: int) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = secrets.token_hex(20)
    instance = f"bench-{secrets.token_hex(3)}"
    emulator = demo_emulator(key, [REPOSITORY])
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="gantryd-footprint-") as tmp:
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
            text = text.replace("max_runners = 4\n", f"max_runners = {runners}\n", 1)
            text = text.replace('bootstrap_timeout = "2m"', 'bootstrap_timeout = "30m"')
            text = text.replace("instance = ", 'log_level = "warning"\ninstance = ', 1)
            config.write_text(text)
            baseline = await trio.lowlevel.open_process([sys.executable, "-c", BASELINE])
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
                            await trio.sleep(0.2)
                await trio.sleep(3)  # let start-up work (GC pass, first samples) finish
                idle_rss, _ = rss_mib(gantryd.pid)
                idle_cpu, base_cpu = await _pair(gantryd.pid, baseline.pid)
                base_rss, _ = rss_mib(baseline.pid)
                started = time.monotonic()
                await post_jobs(f"http://127.0.0.1:{port}/webhook", secret, jobs)
                intake_s = time.monotonic() - started
                with trio.fail_after(300):
                    while running_runners(client, instance) < runners:  # noqa: ASYNC110
                        await trio.sleep(0.5)  # a poll of Docker, bounded by the deadline
                await trio.sleep(5)
                busy_cpu = await cpu_share(gantryd.pid)
                loaded_rss, peak_rss = rss_mib(gantryd.pid)
            finally:
                gantryd.send_signal(signal.SIGTERM)
                baseline.kill()
                with trio.move_on_after(30):
                    await gantryd.wait()
                    await baseline.wait()
                for container in client.containers.list(
                    all=True, filters={"label": f"io.gantryd.instance={instance}"}
                ):
                    container.remove(force=True)
                nursery.cancel_scope.cancel()
    print(f"gantryd footprint (2-core machine, Python {sys.version.split()[0]})")
    print(f"{'':44} {'RSS MiB':>9} {'CPU % of a core':>16}")
    print(f"{'baseline: same imports, sleeping':44} {base_rss:9.1f} {base_cpu * 100:16.2f}")
    print(f"{'gantryd idle (no jobs, no runners)':44} {idle_rss:9.1f} {idle_cpu * 100:16.2f}")
    print(
        f"{f'gantryd, {runners} runners + {jobs - runners} queued':44} "
        f"{loaded_rss:9.1f} {busy_cpu * 100:16.2f}"
    )
    print(f"peak RSS {peak_rss:.1f} MiB; {jobs} deliveries accepted in {intake_s:.1f} s")


async def _pair(pid: int, baseline_pid: int) -> tuple[float, float]:
    """CPU shares of gantryd and the baseline over the same window."""
    result: dict[int, float] = {}

    async def one(p: int) -> None:
        result[p] = await cpu_share(p)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, pid)
        nursery.start_soon(one, baseline_pid)
    return result[pid], result[baseline_pid]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runners", type=int, default=50)
    args = parser.parse_args()
    trio.run(measure, args.jobs, args.runners)


if __name__ == "__main__":
    main()
