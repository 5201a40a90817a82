"""Garbage collection of planted objects on the real Docker Engine."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator

import docker
import pytest

from agent.config import PoolConfig
from agent.container.docker_api import DockerAPI
from agent.container.gc import collect_garbage
from agent.container.runner_spec import container_spec, new_runner
from agent.github.client import RunnerTarget

pytestmark = pytest.mark.docker


@pytest.fixture
async def api() -> AsyncIterator[DockerAPI]:
    client = DockerAPI()
    yield client
    client.close()


def _labels(instance: str, runner: str, expires: float) -> dict[str, str]:
    return {
        "io.gantryd.managed": "true",
        "io.gantryd.instance": instance,
        "io.gantryd.runner": runner,
        "io.gantryd.expires": str(int(expires)),
    }


async def test_gc_removes_unknown_and_expired_objects_and_never_unlabelled_ones(
    api: DockerAPI, docker_client: docker.DockerClient, runner_image: str
) -> None:
    instance = f"gc-{secrets.token_hex(3)}"
    other = f"gc-other-{secrets.token_hex(3)}"
    later, past = time.time() + 3600, time.time() - 1
    made = []

    def plant(name: str, labels: dict[str, str]) -> None:
        docker_client.containers.create(runner_image, ["true"], name=name, labels=labels)
        made.append(name)

    plant(f"{instance}-known", _labels(instance, "known", later))
    plant(f"{instance}-orphan", _labels(instance, "orphan", later))
    plant(f"{instance}-expired", _labels(instance, "known-but-old", past))
    plant(f"{instance}-unlabelled", {})
    plant(f"{other}-theirs", _labels(other, "theirs", past))  # another gantryd's: not ours
    volume = docker_client.volumes.create(
        f"{instance}-vol", labels=_labels(instance, "gone", later)
    )
    network = docker_client.networks.create(
        f"{instance}-net", labels=_labels(instance, "known-but-old", past)
    )
    kept = docker_client.volumes.create(
        f"{instance}-kept", labels=_labels(instance, "known", later)
    )
    try:
        collected = await collect_garbage(
            api, instance=instance, known={"known", "known-but-old"}, now=time.time()
        )
        assert sorted(collected.containers) == [f"{instance}-expired", f"{instance}-orphan"]
        assert collected.volumes == [f"{instance}-vol"]
        assert collected.networks == [f"{instance}-net"]
        assert docker_client.volumes.get(f"{instance}-kept").name == f"{instance}-kept"
        left = {c.name for c in docker_client.containers.list(all=True) if c.name in made}
        assert left == {f"{instance}-known", f"{instance}-unlabelled", f"{other}-theirs"}
    finally:
        for name in made:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(name).remove(force=True)
        for leftover in (volume, kept, network):
            with contextlib.suppress(docker.errors.NotFound):
                leftover.remove()


async def test_gc_removes_a_home_volume_its_container_left_behind(
    api: DockerAPI, docker_client: docker.DockerClient, runner_image: str
) -> None:
    """The read-only root's /home/runner volume carries its runner's labels (runner_spec), so
    one left by a container removed without its volumes (``docker rm -f`` by hand) is found."""
    instance = f"gc-{secrets.token_hex(3)}"
    pool = PoolConfig(name="p", labels=("self-hosted",), read_only_rootfs=True)
    runner = new_runner(
        pool,
        RunnerTarget(repository="octo-org/app"),
        None,
        prefix="gantryd",
        instance=instance,
        now=time.time(),
    )
    spec = dataclasses.replace(container_spec(runner, pool, instance=instance), image=runner_image)
    container_id = await api.create(spec)
    docker_client.api.remove_container(container_id, force=True)  # no v: the volume stays
    (left,) = docker_client.volumes.list(filters={"label": f"io.gantryd.instance={instance}"})
    try:
        collected = await collect_garbage(api, instance=instance, known=(), now=time.time())
        assert collected.volumes == [left.name]
        assert (
            docker_client.volumes.list(filters={"label": f"io.gantryd.instance={instance}"}) == []
        )
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            left.remove(force=True)
