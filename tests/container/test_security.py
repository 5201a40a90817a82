"""The strict and compat profiles, checked on real containers with `docker inspect`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from agent.config import PoolConfig, SecurityProfile
from agent.container.docker_api import ContainerSpec, DockerAPI
from agent.container.security import host_options

MiB = 1024 * 1024


@pytest.fixture
async def api() -> AsyncIterator[DockerAPI]:
    client = DockerAPI()
    yield client
    client.close()


async def _inspect(api: DockerAPI, image: str, pool: PoolConfig) -> dict[str, object]:
    spec = ContainerSpec(
        name=f"gantryd-test-{uuid.uuid4().hex[:8]}",
        image=image,
        command=("/bin/sh", "-c", "true"),
        labels={"io.gantryd.test": "true"},
        environment={},
        host=host_options(pool),
    )
    container_id = await api.create(spec)
    try:
        return await api.inspect(container_id)
    finally:
        await api.remove(container_id)


async def test_strict_profile_locks_the_container_down(api: DockerAPI, runner_image: str) -> None:
    pool = PoolConfig(
        name="p",
        labels=("self-hosted",),
        memory=256 * MiB,
        cpus=0.5,
        pids_limit=128,
        tmp_size=64 * MiB,
        read_only_rootfs=True,
        network="none",
        nofile=4096,
    )
    info = await _inspect(api, runner_image, pool)
    host = info["HostConfig"]
    assert isinstance(host, dict)
    config = info["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "1001"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Privileged"] is False
    assert host["PidMode"] == "" and host["IpcMode"] in ("private", "")
    assert host["PidsLimit"] == 128
    assert host["Memory"] == 256 * MiB and host["MemorySwap"] == 256 * MiB
    assert host["NanoCpus"] == 500_000_000
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
        "nofile": (4096, 4096),
        "core": (0, 0),
    }
    assert host["Init"] is True
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"]["/tmp"] == f"rw,nosuid,nodev,size={64 * MiB}"
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "10m", "max-file": "3"},
    }
    assert not host.get("Binds")
    assert host["NetworkMode"] == "none"
    # Docker's default seccomp profile (never unconfined), no host user namespace, and no
    # mounts at all: no Docker socket, no host path (the allow-list of host mounts is empty).
    assert not any("seccomp" in opt for opt in host["SecurityOpt"])
    assert host["UsernsMode"] == "" and host["CgroupnsMode"] in ("private", "host", "")
    assert info["Mounts"] == [] and not host.get("Mounts")
    assert not host["CapAdd"] and not host["Devices"]


async def test_compat_profile_is_still_unprivileged(api: DockerAPI, runner_image: str) -> None:
    pool = PoolConfig(name="p", labels=("self-hosted",), security=SecurityProfile.COMPAT)
    info = await _inspect(api, runner_image, pool)
    host = info["HostConfig"]
    assert isinstance(host, dict)
    assert host["Privileged"] is False
    assert not host.get("CapAdd")
    assert host["ReadonlyRootfs"] is False
    assert host["Memory"] == host["MemorySwap"]
