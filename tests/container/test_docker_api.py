"""DockerAPI's own use of the Engine's socket: its connections are kept and reused.

docker-py keys unix-socket connection pools by the request URL, so every call naming a
container used to open a connection of its own. The Engine is reached here through a relay that
counts the connections made to it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

import docker
import pytest
import trio

from agent.container.docker_api import DockerAPI

pytestmark = pytest.mark.docker

ENGINE = "/var/run/docker.sock"


async def counting_relay(
    path: str,
    accepted: list[int],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forward every connection on ``path`` to the Engine, appending to ``accepted`` for each."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()

    async def pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        async for chunk in source:
            await sink.send_all(chunk)

    async def handle(client: trio.SocketStream) -> None:
        accepted.append(1)
        engine = await trio.open_unix_socket(ENGINE)
        async with client, engine, trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, engine)
            await pipe(engine, client)
            nursery.cancel_scope.cancel()

    try:
        await trio.serve_listeners(handle, [trio.SocketListener(sock)], task_status=task_status)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def test_calls_naming_different_containers_share_one_connection(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    path = str(tmp_path / "docker.sock")
    labels = {"io.gantryd.managed": "true", "io.gantryd.instance": f"api-{secrets.token_hex(3)}"}
    containers = [
        docker_client.containers.create(runner_image, ["true"], labels=labels, network_mode="none")
        for _ in range(3)
    ]
    accepted: list[int] = []
    api: DockerAPI | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(counting_relay, path, accepted)
            api = await trio.to_thread.run_sync(DockerAPI, f"unix://{path}")
            for c in containers:  # one after the other: one connection is enough
                assert (await api.inspect(c.id))["Id"] == c.id
            for c in containers:
                assert await api.remove(c.id)
            nursery.cancel_scope.cancel()
    finally:
        if api is not None:
            api.close()
        for c in containers:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
    # The version negotiation's connection, then one for the six calls.
    assert len(accepted) <= 2
