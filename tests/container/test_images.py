"""Image pulls per pull_policy against a real registry on 127.0.0.1 (Debian's docker-registry).

dockerd treats 127.0.0.0/8 registries as insecure (plain HTTP) by default, so no daemon flag is
needed. The registry binary comes from Debian's ``docker-registry`` package.
"""

from __future__ import annotations

import contextlib
import io
import secrets
from pathlib import Path

import docker
import docker.errors
import pytest
import trio

from agent.container.lifecycle import Outcome
from agent.queue.base import JobState
from tests.conftest import remove_managed
from tests.container.stack import free_port, pool_stack, wait_state

pytestmark = pytest.mark.docker


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


async def test_a_moving_tag_is_pulled_again_after_pull_interval(
    tmp_path: Path, docker_client: docker.DockerClient, registry: str, runner_image: str
) -> None:
    image = f"{registry}/gantryd/moving-{secrets.token_hex(3)}:latest"
    old = docker_client.images.get(runner_image)
    old.tag(image)
    _push(docker_client, image)
    docker_client.images.remove(image)
    pool = {"image": image, "pull_policy": "if-not-present", "pull_interval": "1s"}
    async with pool_stack(tmp_path, pool=pool) as stack:
        try:
            assert stack.daemon.pools is not None
            pools = stack.daemon.pools
            first = stack.emulator.create_job("octo-org/app", ["self-hosted"], "echo one")
            with trio.fail_after(60):
                await stack.emulator.wait_job(first.id, "completed")
            before = pools.stats.image_digests[image]
            # The tag moves at the registry while this host still has the old image under it.
            newer = f"FROM {runner_image}\nLABEL io.gantryd.test.moved={secrets.token_hex(3)}\n"
            docker_client.images.build(fileobj=io.BytesIO(newer.encode()), tag=image, rm=True)
            _push(docker_client, image)
            old.tag(image)
            await trio.sleep(1.0)  # the condition is pull_interval itself passing
            second = stack.emulator.create_job("octo-org/app", ["self-hosted"], "echo two")
            with trio.fail_after(60):
                await stack.emulator.wait_job(second.id, "completed")
            after = pools.stats.image_digests[image]
            assert after != before and after.startswith(image.rsplit(":", 1)[0] + "@sha256:")
            assert stack.emulator.job(second.id).conclusion == "success"
        finally:
            remove_managed(docker_client, stack.setup.instance)
            _untag(docker_client, image.rsplit(":", 1)[0])


async def test_a_failed_recheck_keeps_the_local_image(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    image = f"127.0.0.1:{free_port()}/gantryd/offline-{secrets.token_hex(3)}:latest"  # no one
    docker_client.images.get(runner_image).tag(image)
    pool = {"image": image, "pull_policy": "if-not-present"}
    async with pool_stack(tmp_path, pool=pool) as stack:
        try:
            assert stack.daemon.pools is not None
            job = stack.emulator.create_job("octo-org/app", ["self-hosted"], "echo local")
            with trio.fail_after(60):
                await stack.emulator.wait_job(job.id, "completed")
            assert stack.emulator.job(job.id).conclusion == "success"
            assert stack.daemon.pools.stats.outcomes[Outcome.PROVISION_FAILED] == 0
        finally:
            remove_managed(docker_client, stack.setup.instance)
            docker_client.images.remove(image)


def _untag(client: docker.DockerClient, repository: str) -> None:
    """Drop every name and digest reference under ``repository`` (never an image by id: the
    old image under the tag is the shared stand-in runner image)."""
    for found in client.images.list(name=repository):
        for ref in [*found.tags, *found.attrs.get("RepoDigests", [])]:
            if ref.startswith(repository + ":") or ref.startswith(repository + "@"):
                with contextlib.suppress(docker.errors.ImageNotFound):  # went with a tag
                    client.images.remove(ref)


def _push(client: docker.DockerClient, image: str) -> None:
    for line in client.images.push(image, stream=True, decode=True):
        assert "error" not in line, line
