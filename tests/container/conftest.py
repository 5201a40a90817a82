"""Fixtures for the pool supervisor's tests: derived runner images that misbehave on purpose,
and the official-like runner image."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

OFFICIAL_IMAGE = "gantryd/stand-in-runner-official:latest"
DOCKERFILE = (
    "FROM gantryd/stand-in-runner:latest\nCOPY --chown=1001:1001 run.sh /home/runner/run.sh\n"
)


def _build(tmp: Path, tag: str, script: str) -> str:
    (tmp / "Dockerfile").write_text(DOCKERFILE)
    run = tmp / "run.sh"
    run.write_text("#!/bin/sh\n" + script + "\n")
    run.chmod(0o755)
    subprocess.run(
        ["docker", "build", "--quiet", "--network", "none", "--tag", tag, str(tmp)],
        check=True,
        capture_output=True,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    return tag


@pytest.fixture(scope="session")
def exiting_image(
    runner_image: str, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> str:
    """A runner that exits 0 at once without taking a job (a broken image, a bad config)."""
    return _build(
        tmp_path_factory.mktemp("exiting"), "gantryd/test-exiting-runner:latest", "exit 0"
    )


@pytest.fixture(scope="session")
def silent_image(
    runner_image: str, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> str:
    """A runner that never connects to GitHub (it hangs): only bootstrap_timeout ends it."""
    return _build(
        tmp_path_factory.mktemp("silent"), "gantryd/test-silent-runner:latest", "exec sleep 3600"
    )


@pytest.fixture(scope="session")
def official_image(docker_client: docker.DockerClient) -> str:
    """The official-like stand-in (images/official-like-runner/): uid 1001 `runner`, sudo,
    run.sh that writes into /home/runner; built locally, cached after the first build."""
    root = Path(__file__).resolve().parents[2]
    build = root / "images/official-like-runner/build.sh"
    subprocess.run(["bash", str(build)], check=True, capture_output=True)
    docker_client.images.get(OFFICIAL_IMAGE)
    return OFFICIAL_IMAGE
