"""The Docker event watcher survives the Engine going away and coming back.

Restarting dockerd itself would disrupt every other test using this Engine at the same time, so
the outage is made between gantryd and the Engine: gantryd's DockerAPI talks to a unix-socket
relay in front of /var/run/docker.sock, and the relay is shut down (connections cut, nothing
listening: exactly what a stopped dockerd looks like to a client) and started again. A container
that dies during the outage must still be reported once the watcher has reconnected.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path

import docker
import pytest
import trio

from agent.container.docker_api import ContainerEvent, DockerAPI
from agent.container.monitoring import DockerHealth, watch_events

pytestmark = pytest.mark.docker

ENGINE = "/var/run/docker.sock"


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    async for chunk in source:
        await sink.send_all(chunk)


async def relay(
    path: str, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Forward every connection on ``path`` to the Engine's socket, until cancelled."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()

    async def handle(client: trio.SocketStream) -> None:
        engine = await trio.open_unix_socket(ENGINE)
        async with client, engine, trio.open_nursery() as nursery:

            async def both(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
                await _pipe(a, b)
                nursery.cancel_scope.cancel()

            nursery.start_soon(both, client, engine)
            nursery.start_soon(both, engine, client)

    try:
        await trio.serve_listeners(handle, [trio.SocketListener(sock)], task_status=task_status)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# docker-py's unix-socket connect does not close its socket when the connect fails (the Engine
# is away), so each failed attempt leaves one for the garbage collector: a ResourceWarning from
# a third-party library, not a leak of gantryd's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_watcher_backs_off_while_docker_is_away_and_replays_missed_events(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    path = str(tmp_path / "docker.sock")
    instance = f"mon-{secrets.token_hex(3)}"
    health = DockerHealth()
    connected = 0
    died: dict[str, int | None] = {}
    seen = trio.Event()

    async def handle(event: ContainerEvent) -> None:
        if event.action == "die" and event.labels.get("io.gantryd.instance") == instance:
            died[event.container_id] = event.exit_code
            seen.set()

    async def on_connected() -> None:
        nonlocal connected
        connected += 1

    container = None
    api: DockerAPI | None = None
    try:
        async with trio.open_nursery() as nursery:
            relay_scope = trio.CancelScope()

            async def run_relay(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
                with relay_scope:
                    await relay(path, task_status=task_status)

            await nursery.start(run_relay)
            api = await trio.to_thread.run_sync(DockerAPI, f"unix://{path}")
            await nursery.start(
                lambda task_status: watch_events(
                    api, handle, health=health, on_connected=on_connected, task_status=task_status
                )
            )
            assert health.available and connected == 1

            relay_scope.cancel()  # the Engine "goes away"
            with trio.fail_after(10):
                await health.wait_available(False)
            labels = {"io.gantryd.managed": "true", "io.gantryd.instance": instance}
            container = docker_client.containers.run(
                runner_image, ["sh", "-c", "exit 3"], labels=labels, detach=True
            )
            assert container.wait(timeout=30)["StatusCode"] == 3

            relay_scope = trio.CancelScope()
            await nursery.start(run_relay)  # ... and comes back
            with trio.fail_after(60):
                await health.wait_available(True)
                await seen.wait()
            assert died == {container.id: 3}
            assert health.outages == 1 and connected == 2
            nursery.cancel_scope.cancel()
    finally:
        if api is not None:
            api.close()
        if container is not None:
            container.remove(force=True)


async def test_events_of_another_instance_are_filtered_out_by_the_engine(
    docker_client: docker.DockerClient, runner_image: str
) -> None:
    """With ``instance``, the stream carries that instance's containers only: another gantryd's
    (or a test's) managed containers on the same Engine never reach this one."""
    ours, theirs = f"mon-{secrets.token_hex(3)}", f"mon-{secrets.token_hex(3)}"
    api = await trio.to_thread.run_sync(DockerAPI)
    created = []
    since = int(time.time()) - 1  # the stream opens on its thread: replay from before the runs
    try:
        async with api.events(since=since, instance=ours) as events:
            for instance in (theirs, ours):  # theirs dies first
                labels = {"io.gantryd.managed": "true", "io.gantryd.instance": instance}
                container = docker_client.containers.run(
                    runner_image, ["true"], labels=labels, detach=True, network_mode="none"
                )
                created.append(container)
                container.wait(timeout=30)
            seen = []
            with trio.fail_after(30):
                async for event in events:
                    seen.append(event)
                    if event.action == "die":
                        break
        assert {e.labels.get("io.gantryd.instance") for e in seen} == {ours}
        assert seen[-1].container_id == created[1].id
    finally:
        api.close()
        for container in created:
            container.remove(force=True)
