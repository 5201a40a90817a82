"""Fixtures shared across the suite: the real Docker Engine and the stand-in runner image."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER_IMAGE = "gantryd/stand-in-runner:latest"


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    """A daemon started in-process sets the process umask to 077 (agent/startup.py): put it back
    so one test's daemon does not change the modes of what later tests create."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A docker-py client for assertions; fails (never skips) when no engine answers."""
    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def runner_image(docker_client: docker.DockerClient) -> str:
    """The stand-in runner image, built locally (no registry is reachable)."""
    subprocess.run(["bash", str(ROOT / "images/runner/build.sh")], check=True, capture_output=True)
    docker_client.images.get(RUNNER_IMAGE)
    return RUNNER_IMAGE


def managed_containers(client: docker.DockerClient, instance: str) -> list[str]:
    """Names of gantryd's containers for one instance, running or not, as listed (sparse: an
    inspect per container would fail with 404 on one gantryd removes meanwhile)."""
    found = client.containers.list(
        all=True,
        sparse=True,
        filters={"label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"]},
    )
    return [str(c.attrs["Names"][0]).lstrip("/") for c in found]


def remove_managed(client: docker.DockerClient, instance: str) -> None:
    # sparse: no inspect per listed container, which races gantryd's own removals (404).
    for container in client.containers.list(
        all=True,
        sparse=True,
        filters={"label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"]},
    ):
        try:
            container.remove(force=True, v=True)  # with its /home/runner volume, if any
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone, or gantryd's own removal under way
                raise
    # The per-job volumes gantryd creates itself (read-only root's /home/runner, dind's) are
    # named, so ``v=True`` leaves them: remove what is still labelled with the instance.
    for volume in client.volumes.list(
        filters={"label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"]}
    ):
        try:
            volume.remove(force=True)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone, or still mounted by a removal under way
                raise
