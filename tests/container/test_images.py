"""Image pulls per pull_policy against a real registry on 127.0.0.1 (Debian's docker-registry).

dockerd treats 127.0.0.0/8 registries as insecure (plain HTTP) by default, so no daemon flag is
needed. The registry binary comes from Debian's ``docker-registry`` package.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
import trio

from agent.container.lifecycle import Outcome
from agent.queue.base import JobState
from tests.conftest import remove_managed
from tests.container.stack import free_port, pool_stack, wait_state

pytestmark = pytest.mark.docker


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


@pytest.fixture(scope="module")
def pushed_image(registry: str, runner_image: str, docker_client: docker.DockerClient) -> str:
    """The stand-in runner image pushed to the registry, and removed locally."""
    image = f"{registry}/gantryd/stand-in-runner:pulltest"
    docker_client.images.get(runner_image).tag(image)
    for line in docker_client.images.push(image, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(image)
    return image


async def test_pull_always_fetches_the_image_and_records_its_digest(
    tmp_path: Path, docker_client: docker.DockerClient, pushed_image: str
) -> None:
    pool = {"image": pushed_image, "pull_policy": "always"}
    async with pool_stack(tmp_path, pool=pool) as stack:
        try:
            assert stack.daemon.pools is not None
            pools = stack.daemon.pools
            job = stack.emulator.create_job("octo-org/app", ["self-hosted"], "echo pulled")
            with trio.fail_after(60):
                await stack.emulator.wait_job(job.id, "completed")
                await pools.wait_no_runners()
            assert stack.emulator.job(job.id).conclusion == "success"
            digest = pools.stats.image_digests[pushed_image]
            assert digest.startswith(pushed_image.rsplit(":", 1)[0] + "@sha256:")
            usage = await pools.usage(job.id)
            assert usage is not None and usage.image_digest == digest
        finally:
            remove_managed(docker_client, stack.setup.instance)
            docker_client.images.remove(pushed_image, force=True)


async def test_failed_pull_is_an_infrastructure_failure_with_the_registry_message(
    tmp_path: Path, docker_client: docker.DockerClient, registry: str
) -> None:
    missing = f"{registry}/gantryd/no-such-image:latest"
    pool = {"image": missing, "pull_policy": "if-not-present"}
    async with pool_stack(tmp_path, pool=pool, queue={"retry_attempts": 0}) as stack:
        assert stack.daemon.pools is not None and stack.daemon.queue is not None
        job = stack.emulator.create_job("octo-org/app", ["self-hosted"], "echo never")
        with trio.fail_after(60):
            entry = await wait_state(stack.daemon.pools, stack.daemon.queue, job.id, JobState.DEAD)
        error = entry.last_error or ""
        assert f"image pull failed for {missing}" in error
        assert "manifest unknown" in error  # the registry's own words
        assert stack.daemon.pools.stats.outcomes[Outcome.PROVISION_FAILED] == 1
