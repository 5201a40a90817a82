"""Test support: the GitHub stand-in plus gantryd with pool settings chosen per test.

Like ``agent.demo.demo_stack``, but the ``[[pool]]``, ``[scheduler]`` and ``[queue]`` tables are
built from keyword arguments, and gantryd can also run as a ``gantryd serve`` subprocess (for the
SIGKILL test) on a fixed port with the same state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import load_config
from agent.container.pool_manager import PoolManager
from agent.daemon import Daemon
from agent.emulator.server import serve_emulator
from agent.emulator.state import Emulator
from agent.queue.base import JobQueue, JobState, QueuedJob
from agent.reload import LiveConfig
from agent.systemd import Notifier

APP_ID = 424242
INSTALLATION_ID = 1001
REPOSITORIES = ("octo-org/app", "octo-org/lib", "octo-org/web")
LABELS = ("self-hosted", "linux", "x64")
RUNNER_IMAGE = "gantryd/stand-in-runner:latest"
ROOT = Path(__file__).resolve().parents[2]

POOL_DEFAULTS: Mapping[str, Any] = {
    "name": "default",
    "labels": list(LABELS),
    "image": RUNNER_IMAGE,
    "network": "host",
    "read_only_rootfs": True,
    "memory": "128MiB",
    "cpus": 0.5,
    "pids_limit": 256,
    "nofile": 4096,
    "tmp_size": "64MiB",
    "pull_policy": "never",
    "bootstrap_timeout": "2m",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # strings and arrays of strings: JSON is valid TOML here


def _table(header: str, values: Mapping[str, Any]) -> str:
    lines = [header] + [f"{key} = {_toml_value(v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Setup:
    """The emulator and a config file for gantryd, before gantryd runs."""

    emulator: Emulator
    config_path: Path
    webhook_secret: str
    instance: str
    workdir: Path


@asynccontextmanager
async def emulator_setup(
    workdir: Path,
    *,
    pool: Mapping[str, Any] | None = None,
    extra_pools: Sequence[Mapping[str, Any]] = (),
    scheduler: Mapping[str, Any] | None = None,
    queue: Mapping[str, Any] | None = None,
    github: Mapping[str, Any] | None = None,
    repositories: Sequence[str] = REPOSITORIES,
    public_repositories: Sequence[str] = (),
    listen: str = "127.0.0.1:0",
) -> AsyncIterator[Setup]:
    """Serve the emulator and write gantryd's config for it; the emulator stops on exit.

    ``pool`` overrides ``POOL_DEFAULTS`` for the pool named "default"; each of ``extra_pools``
    is a further ``[[pool]]`` on the same defaults (give it a name and labels of its own).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    webhook_secret = secrets.token_hex(20)
    instance = f"test-{secrets.token_hex(3)}"
    emulator = Emulator(
        app_id=APP_ID,
        app_public_key=key.public_key(),
        installations={INSTALLATION_ID: list(repositories)},
        public_repositories=public_repositories,
    )
    pem = workdir / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    secret_file = workdir / "webhook-secret"
    secret_file.write_text(webhook_secret)
    secret_file.chmod(0o600)
    async with trio.open_nursery() as nursery:
        api_url = await nursery.start(serve_emulator, emulator)
        config = (
            _table(
                "[server]",
                {
                    "listen": listen,
                    "metrics_listen": "127.0.0.1:0",  # several stacks may run at once
                    "state_dir": str(workdir),
                    "runtime_dir": str(workdir / "run"),
                    "instance": instance,
                },
            )
            + _table(
                "[github]",
                {
                    "api_url": api_url,
                    "app_id": APP_ID,
                    "private_key_file": "app.pem",
                    "webhook_secret_file": "webhook-secret",
                    **(github or {}),
                },
            )
            + _table("[queue]", {"retry_attempts": 2, "retry_delay": "1s", **(queue or {})})
            + _table("[scheduler]", {"max_runners": 4, "concurrency": 4, **(scheduler or {})})
            + _table("[[pool]]", {**POOL_DEFAULTS, **(pool or {})})
            + "".join(_table("[[pool]]", {**POOL_DEFAULTS, **extra}) for extra in extra_pools)
        )
        path = workdir / "config.toml"
        path.write_text(config)
        yield Setup(emulator, path, webhook_secret, instance, workdir)
        nursery.cancel_scope.cancel()


@dataclass
class Stack:
    setup: Setup
    daemon: Daemon
    intake_url: str

    @property
    def emulator(self) -> Emulator:
        return self.setup.emulator


@asynccontextmanager
async def pool_stack(
    workdir: Path, *, exit_settle: float = 5.0, docker_url: str | None = None, **settings: Any
) -> AsyncIterator[Stack]:
    """Emulator + an in-process gantryd (``Daemon``); leaving the block stops both.
    ``docker_url``: where gantryd reaches the Engine (default: the local socket)."""
    async with emulator_setup(workdir, **settings) as setup, trio.open_nursery() as nursery:
        daemon = Daemon(
            live=LiveConfig(load_config(setup.config_path)),
            notifier=Notifier({}),
            docker_url=docker_url,
            exit_settle=exit_settle,
        )
        intake_url = await nursery.start(daemon.run)
        setup.emulator.add_hook(intake_url + "/webhook", setup.webhook_secret)
        yield Stack(setup, daemon, intake_url)
        nursery.cancel_scope.cancel()


async def wait_state(
    pools: PoolManager, queue: JobQueue, job_id: int, state: JobState
) -> QueuedJob:
    """Until the job reaches ``state``, re-checked whenever the pool supervisor changes."""
    while (entry := await queue.get(job_id)) is None or entry.state is not state:
        await pools.wait_changed()
    return entry


async def wait_entry(queue: JobQueue, job_id: int, state: JobState) -> None:
    """Until the job's queue entry is in ``state``, when nothing of gantryd's changes meanwhile
    (so ``wait_state`` would not wake); the caller bounds the wait."""
    while (entry := await queue.get(job_id)) is None or entry.state is not state:  # noqa: ASYNC110
        await trio.sleep(0.1)  # the queue has no change notification


_RELAY_MAIN = """
import sys, trio
from tests.container.test_monitoring import relay

async def main(path):
    async with trio.open_nursery() as nursery:
        await nursery.start(relay, path)
        print("ready", flush=True)

trio.run(main, sys.argv[1])
"""


class RelayProcess:
    """The unix-socket relay of test_monitoring.py in a process of its own, in front of the
    Engine: gantryd's Daemon makes its first Docker call on the event loop's thread, so an
    in-process relay could not answer it. ``stop`` kills it (connections cut, nothing listening:
    what a stopped dockerd looks like to a client); ``start`` serves again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._process: trio.Process | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by the killed one
        self._process = process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _RELAY_MAIN, self.path],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stdout is not None
        seen = b""
        while b"ready" not in seen:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"relay exited with {await process.wait()}")
            seen += chunk

    async def stop(self) -> None:
        if self._process is not None:
            process, self._process = self._process, None
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()


class ServeProcess:
    """``gantryd serve`` as a child process; ``wait_ready`` listens on its NOTIFY_SOCKET."""

    def __init__(self, config_path: Path, workdir: Path) -> None:
        self._notify_path = str(workdir / f"notify-{secrets.token_hex(3)}.sock")
        self._notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bound = False
        self._config_path = config_path
        self.process: trio.Process | None = None
        self.log = workdir / "serve.log"

    async def start(self) -> None:
        if not self._bound:
            await self._notify.bind(self._notify_path)
            self._bound = True
        with self.log.open("ab") as out:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "agent.cli", "serve", "--config", str(self._config_path)],
                env={**os.environ, "NOTIFY_SOCKET": self._notify_path},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self) -> None:
        """Return at READY=1; the caller bounds the wait."""
        while True:
            data = await self._notify.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                return

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in gantryd."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, as systemd stops it."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.fail_after(30):
                await self.process.wait()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stop()
        self._notify.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._notify_path)
