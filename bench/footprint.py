"""gantryd's own footprint: RSS and CPU when idle, and with 50 runners and 10k queued jobs.

docs/design.md §8 targets RSS <= 100 MB with 50 runners and 10k queued, idle CPU ~ 0. The baseline,
measured in the same run, is a Python process that imports everything gantryd imports and then
sleeps: what the interpreter and the libraries cost before gantryd does anything.

gantryd runs as a real `gantryd serve` subprocess against the GitHub stand-in (served by this
script) and the real Docker Engine; 10,000 signed `queued` deliveries are posted to its intake,
it provisions runners up to max_runners = 50 (the stand-in has no job for them, so they wait,
connected), and the rest stay queued. Needs root, Docker and the stand-in runner image
(`make setup`). Run: .venv/bin/python bench/footprint.py [--jobs 10000] [--runners 50]
[--idle-window 120]

Idle is measured for two daemons side by side over the same window (``--idle-window``, long
enough to hold two of the scale-set long-polls, which the service answers after 50 s): the
webhook-only one, and one with an idle scale-set pool beside its webhook pool, whose listener
holds a session and long-polls. Each talks to a stand-in of its own, which counts the requests
it is sent: what an idle gantryd asks of GitHub per minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and bench/job_queue.py would shadow the standard
# library's queue module: put the repository root there instead.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import collections
import hashlib
import hmac
import json
import re
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
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from agent.demo import INSTALLATION_ID, demo_emulator, write_demo_config
from agent.emulator import Emulator
from agent.emulator.asgi import Receive, Scope, Send
from agent.emulator.server import build_app
from bench.support import cpu_seconds, free_port, rss_mib

REPOSITORY = "octo-org/app"
IDLE_WINDOW = 10.0  # seconds of CPU accounting per measurement
BASELINE = "import agent.daemon, agent.cli, trio, signal; trio.run(trio.sleep_forever)"


async def cpu_share(pid: int, window: float = IDLE_WINDOW) -> float:
    """Share of one core used over ``window`` seconds of wall time."""
    before = cpu_seconds(pid)
    await trio.sleep(window)
    return (cpu_seconds(pid) - before) / window


class Counted:
    """The stand-in's app, counting the requests it is sent: REST, or the Actions service
    (scale sets, sessions, the message long-poll)."""

    def __init__(self, emulator: Emulator) -> None:
        self._app = build_app(emulator)
        self.counts: collections.Counter[str] = collections.Counter()
        self.paths: collections.Counter[str] = collections.Counter()  # "GET /path/{n}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = str(scope["path"])
            self.counts["actions" if path.startswith("/_actions/") else "rest"] += 1
            self.paths[f"{scope['method']} {re.sub(r'[0-9][0-9a-f-]*', '{n}', path)}"] += 1
        await self._app(scope, receive, send)


async def serve_counted(
    emulator: Emulator, counted: Counted, *, task_status: trio.TaskStatus[str]
) -> None:
    """`agent.emulator.server.serve_emulator`, with ``counted`` in front of the app."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        binds: list[str] = await nursery.start(serve, counted, config)
        emulator.base_url = binds[0]
        task_status.started(emulator.base_url)


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


async def start_gantryd(
    workdir: Path,
    api_url: str,
    *,
    key: rsa.RSAPrivateKey,
    runners: int,
    scale_set_pool: str = "",
) -> tuple[trio.Process, int, str, str]:
    """A `gantryd serve` subprocess on the stand-in at ``api_url``, ready (``/readyz`` 200: its
    listener, if any, holds its session); (process, intake port, webhook secret, instance)."""
    await trio.Path(workdir).mkdir()
    secret = secrets.token_hex(20)
    instance = f"bench-{secrets.token_hex(3)}"
    port = free_port()
    config = write_demo_config(
        workdir,
        api_url=api_url,
        key=key,
        webhook_secret=secret,
        instance=instance,
        extra_pool=f"max_runners = {runners}",
        scale_set_pool=scale_set_pool,
    )
    text = config.read_text()
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1)
    text = text.replace("max_runners = 4\n", f"max_runners = {runners}\n", 1)
    text = text.replace('bootstrap_timeout = "2m"', 'bootstrap_timeout = "30m"')
    text = text.replace("instance = ", 'log_level = "warning"\ninstance = ', 1)
    config.write_text(text)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "agent", "serve", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    with trio.fail_after(60):
        while True:
            try:
                async with httpx.AsyncClient() as http:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).is_success:
                        break
            except httpx.TransportError:
                pass
            await trio.sleep(0.2)  # a poll of a subprocess, bounded by the deadline
    return process, port, secret, instance


async def stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(30):
        await process.wait()
    if process.returncode is None:
        process.kill()


async def measure(jobs: int, runners: int, idle_window: float) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emulator = demo_emulator(key, [REPOSITORY])
    beside = demo_emulator(key, [REPOSITORY])  # the scale-set daemon's own GitHub
    counted, counted_beside = Counted(emulator), Counted(beside)
    client = docker.from_env()
    instances: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gantryd-footprint-") as tmp:
        workdir = Path(tmp)
        async with trio.open_nursery() as nursery:
            api_url = await nursery.start(serve_counted, emulator, counted)
            beside_url = await nursery.start(serve_counted, beside, counted_beside)
            baseline = await trio.lowlevel.open_process([sys.executable, "-c", BASELINE])
            processes: list[trio.Process] = [baseline]
            try:
                gantryd, port, secret, instance = await start_gantryd(
                    workdir / "webhook", api_url, key=key, runners=runners
                )
                processes.append(gantryd)
                instances.append(instance)
                with_ss, _, _, ss_instance = await start_gantryd(
                    workdir / "scale-set",
                    beside_url,
                    key=key,
                    runners=runners,
                    scale_set_pool="scaleset",
                )
                processes.append(with_ss)
                instances.append(ss_instance)
                await trio.sleep(3)  # let start-up work (GC pass, first samples) finish
                idle_rss, ss_rss = rss_mib(gantryd.pid)[0], rss_mib(with_ss.pid)[0]
                base_rss, _ = rss_mib(baseline.pid)
                before = counted.counts.copy(), counted_beside.counts.copy()
                paths_before = counted.paths.copy(), counted_beside.paths.copy()
                idle = await _shares([gantryd.pid, with_ss.pid, baseline.pid], idle_window)
                idle_cpu, ss_cpu, base_cpu = idle
                per_minute = [
                    {k: (c[k] - b[k]) * 60 / idle_window for k in ("rest", "actions")}
                    for c, b in zip((counted.counts, counted_beside.counts), before, strict=True)
                ]
                both = (counted.paths, counted_beside.paths)
                window_paths = [c - b for c, b in zip(both, paths_before, strict=True)]
                await stop(with_ss)
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
                baseline.kill()
                for process in processes[1:]:
                    await stop(process)
                for name in instances:
                    for container in client.containers.list(
                        all=True, filters={"label": f"io.gantryd.instance={name}"}
                    ):
                        container.remove(force=True)
                nursery.cancel_scope.cancel()
    print(f"gantryd footprint (2-core machine, Python {sys.version.split()[0]})")
    print(f"idle: {idle_window:.0f} s window, the three processes side by side")
    print(f"{'':48} {'RSS MiB':>9} {'CPU % of a core':>16} {'REST/min':>9} {'Actions/min':>12}")
    print(f"{'baseline: same imports, sleeping':48} {base_rss:9.1f} {base_cpu * 100:16.2f}")
    for name, rss, cpu, rate in (
        ("gantryd idle, webhook pool only", idle_rss, idle_cpu, per_minute[0]),
        ("gantryd idle, webhook + idle scale-set pool", ss_rss, ss_cpu, per_minute[1]),
    ):
        print(f"{name:48} {rss:9.1f} {cpu * 100:16.2f} {rate['rest']:9.1f} {rate['actions']:12.1f}")
    for name, paths in zip(("webhook only", "with the scale-set pool"), window_paths, strict=True):
        listed = ", ".join(f"{p} x{n}" for p, n in sorted(paths.items())) or "none"
        print(f"  requests in the idle window, {name}: {listed}")
    print(
        f"{f'gantryd, {runners} runners + {jobs - runners} queued':48} "
        f"{loaded_rss:9.1f} {busy_cpu * 100:16.2f}"
    )
    print(f"peak RSS {peak_rss:.1f} MiB; {jobs} deliveries accepted in {intake_s:.1f} s")


async def _shares(pids: list[int], window: float) -> list[float]:
    """CPU shares of ``pids`` over the same window."""
    result: dict[int, float] = {}

    async def one(p: int) -> None:
        result[p] = await cpu_share(p, window)

    async with trio.open_nursery() as nursery:
        for pid in pids:
            nursery.start_soon(one, pid)
    return [result[p] for p in pids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runners", type=int, default=50)
    parser.add_argument("--idle-window", type=float, default=120.0, help="seconds")
    args = parser.parse_args()
    trio.run(measure, args.jobs, args.runners, args.idle_window)


if __name__ == "__main__":
    main()
