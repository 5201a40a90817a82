"""The per-job disk limit (agent/container/disk.py) on the real Docker Engine, with the
official-like runner image: a job writing past ``disk_limit`` is stopped with the reason.

This machine's /var/lib/docker is ext4 (overlay2 "Backing Filesystem: extfs"), where Docker
cannot enforce ``--storage-opt size``: the measured path is what these tests exercise, and
``test_storage_quota_is_detected_by_trying`` checks that the Engine's refusal was learnt.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
import trio

from agent.config import PoolConfig
from agent.container.disk import DISK_REASON, over_limit
from agent.container.docker_api import ContainerSpec, DockerAPI
from agent.container.lifecycle import Outcome
from agent.container.security import host_options
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import pool_stack

pytestmark = pytest.mark.docker

JOB_LABELS = ["self-hosted", "linux"]
MiB = 1024 * 1024


@pytest.fixture
async def api() -> AsyncIterator[DockerAPI]:
    client = DockerAPI()
    yield client
    client.close()


def test_over_limit_names_usage_and_limit() -> None:
    pool = PoolConfig(name="p", labels=("x",), disk_limit=20 * MiB)
    assert over_limit(20 * MiB, pool) is None
    assert over_limit(None, pool) is None  # not measured (gone)
    assert over_limit(60 * MiB, pool) == "disk limit exceeded: 60.0MiB written, disk_limit is 20MiB"
    assert over_limit(10**12, PoolConfig(name="p", labels=("x",))) is None  # no limit set


async def test_storage_quota_is_detected_by_trying(
    api: DockerAPI, docker_client: docker.DockerClient, official_image: str
) -> None:
    """The first create with a size learns whether the driver can enforce it; on ext4 it
    cannot, and the container is created without (the watcher measures it)."""
    status = dict(docker_client.info()["DriverStatus"])
    pool = PoolConfig(name="p", labels=("x",), disk_limit=64 * MiB, nofile=4096)
    spec = ContainerSpec(
        name=f"gantryd-test-{uuid.uuid4().hex[:8]}",
        image=official_image,
        command=("true",),
        labels={"io.gantryd.test": "true"},
        environment={},
        host=host_options(pool),
    )
    assert api.storage_quota is None
    container_id = await api.create(spec)
    try:
        info = await api.inspect(container_id)
    finally:
        await api.remove(container_id)
    if status.get("Backing Filesystem") != "extfs":
        pytest.skip(f"not ext4 ({status}): which path applies depends on pquota")
    assert api.storage_quota is False
    assert not info["HostConfig"].get("StorageOpt")


@pytest.mark.parametrize("read_only_rootfs", [True, False], ids=["volume", "writable-layer"])
async def test_job_writing_past_disk_limit_is_stopped_with_the_reason(
    tmp_path: Path, docker_client: docker.DockerClient, official_image: str, read_only_rootfs: bool
) -> None:
    """The job writes 60 MiB into its workspace (/home/runner/_work: the per-job volume under
    a read-only root, else the writable layer) against a 20 MiB limit, then would sleep."""
    pool = {
        "image": official_image,
        "read_only_rootfs": read_only_rootfs,
        "disk_limit": "20MiB",
        "stop_grace": "2s",
        "memory": "256MiB",
    }
    async with pool_stack(tmp_path, pool=pool) as stack:
        try:
            pools = stack.daemon.pools
            assert pools is not None
            script = "head -c 60000000 /dev/zero > blob\nsleep 300\n"
            job = stack.emulator.create_job("octo-org/app", JOB_LABELS, script)
            with trio.fail_after(120):
                await stack.emulator.wait_job(job.id, "completed")
                await pools.wait_no_runners()
            assert stack.emulator.job(job.id).conclusion != "success"
            usage = await pools.usage(job.id)
            assert usage is not None and usage.reason is not None
            assert usage.reason.startswith(DISK_REASON), usage.reason
            assert "disk_limit is 20MiB" in usage.reason
            assert pools.stats.outcomes[Outcome.DISK_LIMIT] == 1
            # gantryd removed the container, and the /home/runner volume with it.
            instance = stack.setup.instance
            assert managed_containers(docker_client, instance) == []
            assert (
                docker_client.volumes.list(filters={"label": f"io.gantryd.instance={instance}"})
                == []
            )
        finally:
            remove_managed(docker_client, stack.setup.instance)
