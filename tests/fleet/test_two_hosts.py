"""Two gantryd daemons as two hosts of one fleet, in one trio run, sharing a redis-server of the
test's own, one emulator and the Docker Engine: each lease has one holder, `status --fleet` on
either host shows both, a secret set on one host reaches a job run by the other, and a host that
stops hands its leases over."""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import load_config
from agent.container.secret_injection import SECRETS_DIR
from agent.daemon import Daemon
from agent.demo import demo_emulator, write_demo_config
from agent.emulator.server import serve_emulator
from agent.emulator.state import Emulator
from agent.fleet.leases import CHORES
from agent.ops import protocol
from agent.ops.admin_client import AdminClient
from agent.ops.protocol import A, FleetStatus, Request
from agent.reload import LiveConfig
from agent.systemd import Notifier
from tests.conftest import remove_managed
from tests.container.stack import ServeProcess
from tests.fleet.servers import plain_server

pytestmark = [pytest.mark.docker, pytest.mark.redis]

VALUE = "fleet-shared-value-" + "x" * 12


@dataclass
class Host:
    instance: str
    daemon: Daemon
    admin: AdminClient
    scope: trio.CancelScope

    async def call(self, request: Request[A]) -> A:
        return await trio.to_thread.run_sync(self.admin.call, request)


@dataclass
class TwoHosts:
    emulator: Emulator
    a: Host
    b: Host


def host_config(
    state: Path,
    instance: str,
    api_url: str,
    key: rsa.RSAPrivateKey,
    webhook_secret: str,
    redis_port: int,
    prefix: str,
) -> Path:
    """The demo configuration of one host, on the fleet's Redis, its pool injecting SHARED."""
    path = write_demo_config(
        state, api_url=api_url, key=key, webhook_secret=webhook_secret,
        instance=instance, extra_pool="", runner_prefix="gantryd", source="webhook",
    )  # fmt: skip
    text = path.read_text().replace(
        "[queue]\n",
        f'[queue]\nbackend = "redis"\nredis_prefix = "{prefix}"\n'
        f'redis_url = "redis://127.0.0.1:{redis_port}/0"\n',
    )
    path.write_text(
        text.replace('pull_policy = "never"\n', 'pull_policy = "never"\nsecrets = ["SHARED"]\n')
    )
    return path


@pytest.fixture
async def fleet_of_two(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> AsyncIterator[TwoHosts]:
    (tmp_path / "redis").mkdir()
    server = plain_server(tmp_path / "redis")
    server.start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    webhook_secret = secrets.token_hex(20)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    instances = [f"fleet-{n}-{secrets.token_hex(2)}" for n in "ab"]
    try:
        async with trio.open_nursery() as nursery:
            emulator = demo_emulator(key)
            api_url = await nursery.start(serve_emulator, emulator)
            hosts: list[Host] = []
            for instance in instances:
                state = tmp_path / instance
                state.mkdir()
                if hosts:  # one fleet, one secrets key: copied from the first host
                    shutil.copy(tmp_path / instances[0] / "secrets.key", state / "secrets.key")
                path = host_config(
                    state, instance, api_url, key, webhook_secret, server.port, prefix
                )
                daemon = Daemon(
                    live=LiveConfig(load_config(path)), notifier=Notifier({}), exit_settle=5.0
                )
                scope = trio.CancelScope()

                async def run(
                    daemon: Daemon,
                    scope: trio.CancelScope,
                    *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
                ) -> None:
                    with scope:
                        await daemon.run(task_status=task_status)

                intake = await nursery.start(run, daemon, scope)
                if not hosts:
                    emulator.add_hook(intake + "/webhook", webhook_secret)
                hosts.append(
                    Host(instance, daemon, AdminClient(state / "run" / "admin.sock"), scope)
                )
            yield TwoHosts(emulator, hosts[0], hosts[1])
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
        for instance in instances:
            remove_managed(docker_client, instance)


async def wait_fleet(host: Host, done: object) -> FleetStatus:
    """Ask ``host`` for the fleet until ``done(status)`` holds (heartbeats every 5 s, lease
    renewals every 10 s: conditions in another service's time)."""
    assert callable(done)
    while True:
        fleet = await host.call(protocol.get_fleet())
        if done(fleet):
            return fleet
        await trio.sleep(0.25)


def holders(fleet: FleetStatus) -> dict[str, str]:
    return {lease: h.host for h in fleet.hosts for lease in h.leases}


async def test_two_hosts_share_leases_status_and_secrets(
    fleet_of_two: TwoHosts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator, a, b = fleet_of_two.emulator, fleet_of_two.a, fleet_of_two.b
    with trio.fail_after(60):
        fleet = await wait_fleet(b, lambda f: len(f.hosts) == 2 and set(holders(f)) == set(CHORES))
    assert {h.host for h in fleet.hosts} == {a.instance, b.instance}
    assert all(not h.gone for h in fleet.hosts)
    assert sum(len(h.leases) for h in fleet.hosts) == len(CHORES)  # one holder per chore

    # Webhooks reach host a only; a is drained, so host b runs the job, with the secret that
    # was set through host a's admin socket.
    await a.call(protocol.drain())
    await a.call(protocol.set_secret("SHARED", VALUE.encode()))
    with trio.fail_after(30):
        await wait_fleet(b, lambda f: any(h.host == a.instance and h.drained for h in f.hosts))
    job = emulator.create_job(
        "octo-org/app", ["self-hosted", "linux"], f"sha256sum {SECRETS_DIR}/SHARED"
    )
    with trio.fail_after(120):
        await emulator.wait_job(job.id, "completed")
    finished = emulator.job(job.id)
    assert finished.conclusion == "success", finished.log
    assert (finished.runner_name or "").startswith(f"gantryd-{b.instance}-")
    digest = hashlib.sha256(VALUE.encode()).hexdigest()
    assert f"{digest}  {SECRETS_DIR}/SHARED".encode() in finished.log
    assert VALUE not in caplog.text  # neither host logged the value it stored or injected
    audit = (await b.call(protocol.secret_audit("SHARED"))).audit
    assert [(e.action.value, e.runner) for e in audit] == [
        ("set", None),
        ("inject", finished.runner_name),
    ]

    # Host b stops: its leases are released on the way out and host a takes them all.
    b.scope.cancel()
    with trio.fail_after(60):
        fleet = await wait_fleet(a, lambda f: holders(f) == dict.fromkeys(CHORES, a.instance))


async def test_a_killed_host_is_shown_gone_and_its_leases_move(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """Host b, a `gantryd serve` process, takes both leases first; SIGKILL leaves them held in
    Redis with nobody renewing. Host a shows b gone and ends up holding both."""
    (tmp_path / "redis").mkdir()
    server = plain_server(tmp_path / "redis")
    server.start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    webhook_secret = secrets.token_hex(20)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a_name, b_name = (f"fleet-{n}-{secrets.token_hex(2)}" for n in "ab")
    try:
        async with trio.open_nursery() as nursery:
            emulator = demo_emulator(key)
            api_url = await nursery.start(serve_emulator, emulator)
            (tmp_path / b_name).mkdir()
            b_path = host_config(
                tmp_path / b_name, b_name, api_url, key, webhook_secret, server.port, prefix
            )
            b = ServeProcess(b_path, tmp_path / b_name)
            await b.start()
            with trio.fail_after(60):
                await b.wait_ready()  # its leases were taken before READY=1
            (tmp_path / a_name).mkdir()
            shutil.copy(tmp_path / b_name / "secrets.key", tmp_path / a_name / "secrets.key")
            a_path = host_config(
                tmp_path / a_name, a_name, api_url, key, webhook_secret, server.port, prefix
            )
            a = Daemon(live=LiveConfig(load_config(a_path)), notifier=Notifier({}))
            await nursery.start(a.run)
            admin = Host(
                a_name,
                a,
                AdminClient(tmp_path / a_name / "run" / "admin.sock"),
                nursery.cancel_scope,
            )
            with trio.fail_after(30):
                fleet = await wait_fleet(admin, lambda f: len(f.hosts) == 2)
            assert holders(fleet) == dict.fromkeys(CHORES, b_name)
            await b.kill()
            with trio.fail_after(90):
                fleet = await wait_fleet(
                    admin, lambda f: holders(f) == dict.fromkeys(CHORES, a_name)
                )
                fleet = await wait_fleet(
                    admin, lambda f: any(h.host == b_name and h.gone for h in f.hosts)
                )
            assert holders(fleet) == dict.fromkeys(CHORES, a_name)
            await b.aclose()
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
        for instance in (a_name, b_name):
            remove_managed(docker_client, instance)
