"""A fleet on one machine: gantryd daemons as separate hosts, each in a network namespace the
test makes (a veth pair to the root namespace on a test-only link-local /24), or on a loopback
address of its own (127.0.0.2, 127.0.0.3, …) where namespaces cannot be made (``host_network``
has the layout and the fallback). Each has its own state dir, instance name and admin socket;
all share one real redis-server, and the emulator (in this process) plays GitHub and a load
balancer in front of the hosts (``Emulator.add_hook(..., backends=...)``); both listen on the
services address, which every host, the test and the runner containers reach.

Used by the end-to-end tests and by ``bench/fleet.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import docker
import docker.errors
import httpx
import redis
import trio
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.container.docker_api import INSTANCE_LABEL
from agent.demo import APP_ID, INSTALLATION_ID, write_demo_config
from agent.emulator import Emulator, serve_emulator
from tests.fleet.host_network import HostNetwork, free_port, host_network

REPOSITORIES = ("octo-org/app", "octo-org/lib", "octo-org/web")
LABELS = ["self-hosted"]
POLL = 0.2  # seconds between looks at another process's state, always under a deadline


async def until(
    condition: Callable[[], bool],
    what: str,
    *,
    deadline: float,
    left: Callable[[], object] = lambda: "",
) -> None:
    """Wait for a condition on state of other processes (Docker, the daemons, Redis); the
    failure says what ``left`` finds then."""
    with trio.move_on_after(deadline):
        while not condition():  # noqa: ASYNC110 - state of other processes sends no event
            await trio.sleep(POLL)
        return
    raise AssertionError(f"not within {deadline:g}s: {what}; left: {left()}")


@dataclass
class RedisProcess:
    """redis-server on a fixed address and port, restartable on the same port and data."""

    directory: Path
    address: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.address)

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed (apt install redis-server)"
        # Protected mode refuses clients off loopback without a password; bound to the link
        # address of the test's own veths, only the fleet's namespaces can reach it.
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", self.address, "--dir", str(self.directory),
             "--protected-mode", "no", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    async def wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        try:
            await until(answers, "redis-server answers", deadline=20)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: the server writes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self) -> redis.Redis[str]:
        return redis.Redis.from_url(self.url, decode_responses=True)


@dataclass
class Host:
    """One gantryd daemon playing a build server."""

    index: int
    instance: str
    address: str
    port: int
    workdir: Path
    config: Path
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/webhook"

    @property
    def log(self) -> Path:
        return self.workdir / "gantryd.log"


def host_config(
    workdir: Path,
    *,
    api_url: str,
    key: rsa.RSAPrivateKey,
    secret: str,
    instance: str,
    address: str,
    port: int,
    redis_url: str,
    prefix: str,
    max_runners: int,
    backend: str = "redis",
) -> Path:
    path = write_demo_config(
        workdir, api_url=api_url, key=key, webhook_secret=secret, instance=instance,
        runner_prefix="gf",
        extra_pool='max_idle_age = "20s"',
    )  # fmt: skip
    text = path.read_text()
    queue = f'backend = "{backend}"\nlease = "20s"\n'
    if backend == "redis":
        queue += f'redis_url = "{redis_url}"\nredis_prefix = "{prefix}"\n'
    for old, new in (
        ('listen = "127.0.0.1:0"', f'listen = "{address}:{port}"'),
        ('metrics_listen = "127.0.0.1:0"', f'metrics_listen = "{address}:0"\nlog_level = "info"'),
        ("[queue]\n", f"[queue]\n{queue}"),
        (
            "max_runners = 4\nconcurrency = 4\n",
            f"max_runners = {max_runners}\nconcurrency = {max_runners}\n"
            'reconcile_interval = "10s"\n',
        ),
        ('runner_prefix = "gf"', f'runner_prefix = "gf"\nrepositories = {list(REPOSITORIES)!r}'),
    ):
        assert old in text, old
        text = text.replace(old, new.replace("'", '"'), 1)
    path.write_text(text)
    return path


@dataclass
class Fleet:
    emulator: Emulator
    redis: RedisProcess
    hosts: list[Host]
    prefix: str
    docker: docker.DockerClient
    network: HostNetwork

    async def start(self, host: Host) -> None:
        """Start the host's daemon and wait until it answers /readyz."""
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        log = host.log.open("ab")
        host.process = await trio.lowlevel.open_process(
            self.network.command(
                host.index, [sys.executable, "-m", "agent", "serve", "--config", str(host.config)]
            ),
            stdout=subprocess.DEVNULL, stderr=log, env=env,
        )  # fmt: skip
        log.close()
        ready_url = f"http://{host.address}:{host.port}/readyz"
        with trio.move_on_after(60):
            async with httpx.AsyncClient() as http:
                while True:
                    try:
                        if (await http.get(ready_url)).is_success:
                            return
                    except httpx.TransportError:
                        pass
                    if host.process.poll() is not None:
                        break
                    await trio.sleep(POLL)  # start-up poll, bounded by the deadline
        raise AssertionError(f"{host.instance} not ready; log:\n{host.log.read_text()[-3000:]}")

    async def kill(self, host: Host) -> None:
        assert host.process is not None
        host.process.send_signal(signal.SIGKILL)
        await host.process.wait()

    async def stop(self, host: Host) -> None:
        if host.process is None or host.process.returncode is not None:
            return
        host.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await host.process.wait()
        if host.process.returncode is None:
            host.process.kill()
            await host.process.wait()

    def containers(self, host: Host) -> list[str]:
        found = self.docker.containers.list(
            all=True, sparse=True, filters={"label": f"{INSTANCE_LABEL}={host.instance}"}
        )
        return [c.id for c in found]

    def container_states(self, host: Host) -> list[str]:
        found = self.docker.containers.list(
            all=True, filters={"label": f"{INSTANCE_LABEL}={host.instance}"}
        )
        return [f"{c.name} {c.status}" for c in found]

    def registered_runners(self) -> list[str]:
        self.emulator.reap()
        return [r.name for r in self.emulator._runners.values()]

    def create_jobs(self, count: int, script: Callable[[int], str] = lambda i: "true") -> list[int]:
        """``count`` jobs spread over the repositories; job ``i`` runs ``script(i)``."""
        return [
            self.emulator.create_job(REPOSITORIES[i % len(REPOSITORIES)], LABELS, script(i)).id
            for i in range(count)
        ]


@asynccontextmanager
async def fleet(
    workdir: Path,
    *,
    hosts: int,
    max_runners: int,
    seed: int = 7,
    backend: str = "redis",
) -> AsyncIterator[Fleet]:
    """Redis, the emulator and ``hosts`` daemons behind one balanced hook; everything this made
    is stopped and removed on exit (containers of its instances included, then the network:
    its processes have ended by then)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = "fleet-secret"
    emulator = Emulator(
        app_id=APP_ID,
        app_public_key=key.public_key(),
        installations={INSTALLATION_ID: list(REPOSITORIES)},
        seed=seed,
    )
    tag = os.urandom(3).hex()
    (workdir / "redis").mkdir()
    with host_network(hosts) as network:
        server = RedisProcess(workdir / "redis", network.services)
        server.start()
        client = docker.from_env()
        made: list[Host] = []
        try:
            await server.wait_ready()
            async with trio.open_nursery() as nursery:
                api_url = await nursery.start(
                    partial(serve_emulator, emulator, host=network.services)
                )
                fleet_key = Fernet.generate_key()  # one fleet, one secrets key (docs/fleet.md)
                for i, address in enumerate(network.addresses):
                    port = network.intake_port(i)
                    instance = f"fleet-{tag}-{i + 1}"
                    home = workdir / instance
                    home.mkdir()
                    (home / "secrets.key").write_bytes(fleet_key + b"\n")
                    (home / "secrets.key").chmod(0o600)
                    made.append(
                        Host(
                            index=i,
                            instance=instance,
                            address=address,
                            port=port,
                            workdir=home,
                            config=host_config(
                                home,
                                api_url=api_url,
                                key=key,
                                secret=secret,
                                instance=instance,
                                address=address,
                                port=port,
                                redis_url=server.url,
                                prefix=f"fleet{tag}",
                                max_runners=max_runners,
                                backend=backend,
                            ),
                        )
                    )
                stack = Fleet(emulator, server, made, f"fleet{tag}", client, network)
                try:
                    async with trio.open_nursery() as starting:
                        for host in made:
                            starting.start_soon(stack.start, host)
                    emulator.add_hook(
                        "https://gantryd.example/webhook", secret, backends=[h.url for h in made]
                    )
                    yield stack
                finally:
                    with trio.CancelScope(shield=True):
                        async with trio.open_nursery() as stopping:
                            for host in made:
                                stopping.start_soon(stack.stop, host)
                    nursery.cancel_scope.cancel()
        finally:
            for host in made:
                for c in client.containers.list(
                    all=True, sparse=True, filters={"label": f"{INSTANCE_LABEL}={host.instance}"}
                ):
                    try:
                        c.remove(force=True, v=True)
                    except docker.errors.APIError as exc:
                        if exc.status_code not in (404, 409):
                            raise
            client.close()
            server.stop()


def outbox_empty(client: redis.Redis[str], prefix: str) -> bool:
    return client.zcard(f"{{{prefix}}}:outbox") == 0


def unfinished(client: redis.Redis[str], prefix: str, job_ids: Sequence[int]) -> list[int]:
    """Jobs whose queue entry is missing or not DONE."""
    return [j for j in job_ids if client.hget(f"{{{prefix}}}:job:{j}", "state") != "done"]


def outbox_left(client: redis.Redis[str], prefix: str) -> list[tuple[str, str, str | None]]:
    """(job, outbox entry, reporting turn holder) of what is left in the outbox."""
    base = f"{{{prefix}}}:"
    return [
        (job, (client.hget(base + "outbox:data", job) or "").split("\n")[0],
         client.get(f"{base}fleet:report-turn:{job}"))
        for job in client.zrange(base + "outbox", 0, 20)
    ]  # fmt: skip
