"""Fixtures for the pool supervisor's tests: derived runner images that misbehave on purpose,
the official-like runner image, and a registry on 127.0.0.1 (Debian's docker-registry; dockerd
treats 127.0.0.0/8 registries as insecure, plain HTTP, by default)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from tests.container.stack import free_port

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


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry listening on 127.0.0.1; yields "127.0.0.1:PORT"."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry not found: apt-get install docker-registry")
    root = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root}/data\nhttp:\n  addr: {address}\n"
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the condition "answers /v2/", bounded by the deadline
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("docker-registry did not start")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
