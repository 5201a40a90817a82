"""The strict, sudo and compat profiles and the read-only root, checked on real containers:
`docker inspect`, and the official-like runner image doing what the official one does."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import docker
import pytest
import trio

from agent.config import PoolConfig, SecurityProfile
from agent.container.docker_api import ContainerSpec, DockerAPI
from agent.container.security import SUDO_CAPABILITIES, HostOptions, VolumeMount, host_options
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import pool_stack

pytestmark = pytest.mark.docker
TEST_LABEL = "io.gantryd.test-volume"

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
    # mount but the read-only root's /home/runner volume: no Docker socket, no host path (the
    # allow-list of host mounts is empty).
    assert not any("seccomp" in opt for opt in host["SecurityOpt"])
    assert host["UsernsMode"] == "" and host["CgroupnsMode"] in ("private", "host", "")
    mounts = info["Mounts"]
    assert isinstance(mounts, list)
    assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [
        ("volume", "/home/runner", True)
    ]
    assert mounts[0]["Driver"] == "local" and not host.get("Binds")
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


def _pool(**settings: Any) -> PoolConfig:
    """A pool for running the image: no network, and a nofile dockerd's own limit allows."""
    return PoolConfig(name="p", labels=("self-hosted",), network="none", nofile=4096, **settings)


async def _run(
    api: DockerAPI,
    client: docker.DockerClient,
    image: str,
    host: HostOptions,
    script: str,
    *,
    volume_label: str = "",
) -> tuple[int, str]:
    """Run ``script`` (bash) in a container made with ``host``; its exit status and output.
    The container is removed (with its anonymous volumes) before returning."""
    if volume_label:  # as runner_spec labels the /home/runner volume
        labelled = tuple(
            dataclasses.replace(v, labels={TEST_LABEL: volume_label}) for v in host.volumes
        )
        host = dataclasses.replace(host, volumes=labelled)
    spec = ContainerSpec(
        name=f"gantryd-test-{uuid.uuid4().hex[:8]}",
        image=image,
        command=("/bin/bash", "-c", script),
        labels={"io.gantryd.test": "true"},
        environment={},
        host=host,
    )
    container_id = await api.create(spec)
    try:
        container = client.containers.get(container_id)
        await trio.to_thread.run_sync(container.start)
        with trio.fail_after(60):
            status = await trio.to_thread.run_sync(container.wait)
        return int(status["StatusCode"]), cast(bytes, container.logs()).decode()
    finally:
        await api.remove(container_id)


SUDO_SCRIPT = "sudo -n true && echo SUDO_OK && sudo -n apt-get --version | head -1"


async def test_sudo_fails_under_strict_with_no_new_privileges(
    api: DockerAPI, docker_client: docker.DockerClient, official_image: str
) -> None:
    pool = _pool()
    status, out = await _run(api, docker_client, official_image, host_options(pool), SUDO_SCRIPT)
    assert status == 1, out
    assert 'The "no new privileges" flag is set' in out and "SUDO_OK" not in out


async def test_sudo_profile_lets_the_official_image_sudo(
    api: DockerAPI, docker_client: docker.DockerClient, official_image: str
) -> None:
    pool = _pool(security=SecurityProfile.SUDO)
    info = await _inspect(api, official_image, pool)
    host = info["HostConfig"]
    assert isinstance(host, dict)
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == sorted(SUDO_CAPABILITIES)
    assert not host.get("SecurityOpt") and host["Privileged"] is False
    script = SUDO_SCRIPT + ' && echo "uid=$(id -u) sudo=$(sudo -n id -u 2>/dev/null)"'
    status, out = await _run(api, docker_client, official_image, host_options(pool), script)
    assert status == 0, out
    assert "SUDO_OK" in out and "apt " in out
    assert "uid=1001 sudo=0" in out  # the job is uid 1001; sudo makes it root
    assert "audit" not in out  # AUDIT_WRITE: no "unable to send audit message"


async def test_sudo_profile_grants_no_capability_beyond_sudos(
    api: DockerAPI, docker_client: docker.DockerClient, official_image: str
) -> None:
    """Each of the three is needed (sudo fails or complains without it), and root after sudo
    holds exactly those: its bounding set is no wider."""
    pool = _pool(security=SecurityProfile.SUDO)
    status, out = await _run(
        api,
        docker_client,
        official_image,
        host_options(pool),
        "sudo -n grep CapBnd /proc/self/status",
    )
    assert status == 0, out
    bounding = int(out.split()[-1], 16)
    # linux/capability.h: CAP_SETGID 6, CAP_SETUID 7, CAP_AUDIT_WRITE 29
    assert bounding == (1 << 6) | (1 << 7) | (1 << 29)


async def test_read_only_root_gives_the_official_layout_a_per_job_volume(
    api: DockerAPI, docker_client: docker.DockerClient, official_image: str
) -> None:
    """What run.sh and the Listener write (the helper copy, .runner, _diag, _work, _tool) is
    writable under a read-only root, owned by uid 1001 as in the image; the rest of the root
    stays read-only, and the volume goes with the container."""
    pool = _pool(read_only_rootfs=True)
    assert host_options(pool).volumes == (VolumeMount(target="/home/runner"),)
    label = uuid.uuid4().hex
    script = (
        "set -e; cd /home/runner; cp run-helper.sh.template run-helper.sh;"
        " echo '{}' > .runner; echo x > .credentials_rsaparams;"
        " mkdir -p _diag _work/job-1 _tool; echo log > _diag/Runner_1.log;"
        " head -c 1000000 /dev/zero > _work/job-1/blob; touch /tmp/t;"
        " stat -c '%u %a' /home/runner; stat -c %u _work/job-1/blob; test -x run.sh;"
        " if touch /etc/x 2>/dev/null; then echo ROOT_WRITABLE; fi; echo DONE"
    )
    status, out = await _run(
        api, docker_client, official_image, host_options(pool), script, volume_label=label
    )
    assert status == 0, out
    assert out.split() == ["1001", "777", "1001", "DONE"], out
    assert docker_client.volumes.list(filters={"label": f"{TEST_LABEL}={label}"}) == []


async def test_read_only_root_without_the_volume_fails_as_upstream(
    api: DockerAPI, docker_client: docker.DockerClient, official_image: str
) -> None:
    """The control: the same image and root, without the volume, cannot copy its helper."""
    pool = _pool(read_only_rootfs=True)
    host = dataclasses.replace(host_options(pool), volumes=())
    script = "cp /home/runner/run-helper.sh.template /home/runner/run-helper.sh"
    status, out = await _run(api, docker_client, official_image, host, script)
    assert status != 0 and "Read-only file system" in out, out


@pytest.mark.parametrize("profile", ["strict", "sudo"])
async def test_official_image_runs_jobs_under_read_only_root(
    tmp_path: Path, docker_client: docker.DockerClient, official_image: str, profile: str
) -> None:
    """Through gantryd and the GitHub stand-in: the official-like image under a read-only root
    takes its job and runs it (its run.sh, helper copy, .runner, _diag and _work all in the
    per-job /home/runner volume, labelled as gantryd's); ``sudo`` works under the sudo profile
    only; and no volume is left once the runner is gone."""
    pool = {"image": official_image, "read_only_rootfs": True, "security": profile}
    script = (
        "touch /home/runner/_work/written && ls -a /home/runner | tr '\\n' ' '\n"
        "if touch /etc/written 2>/dev/null; then echo ROOT_WRITABLE; fi\n"
        "sudo -n true && echo SUDO_OK\n"
    )
    async with pool_stack(tmp_path, pool=pool) as stack:
        try:
            pools = stack.daemon.pools
            assert pools is not None
            job = stack.emulator.create_job("octo-org/app", ["self-hosted", "linux"], script)
            with trio.fail_after(30):
                await pools.wait_until(lambda: any(r.container_id for r in pools.runners()))
            instance = f"io.gantryd.instance={stack.setup.instance}"
            labelled = docker_client.volumes.list(filters={"label": instance})
            assert len(labelled) == 1  # the runner's /home/runner, found by gc if left behind
            with trio.fail_after(90):
                await stack.emulator.wait_job(job.id, "completed")
                await pools.wait_no_runners()
            finished = stack.emulator.job(job.id)
            log = finished.log.decode()
            assert ".runner" in log and "_diag" in log and "run-helper.sh" in log, log
            assert "ROOT_WRITABLE" not in log
            if profile == "sudo":
                assert finished.conclusion == "success", log
                assert "SUDO_OK" in log
            else:
                assert finished.conclusion == "failure", log
                assert 'The "no new privileges" flag is set' in log and "SUDO_OK" not in log
            # gantryd removed the container, and the /home/runner volume with it.
            assert managed_containers(docker_client, stack.setup.instance) == []
            assert docker_client.volumes.list(filters={"label": instance}) == []
        finally:
            remove_managed(docker_client, stack.setup.instance)
