"""agent/container/dind.py without Docker: the sidecar's options and the pair's disk usage."""

from __future__ import annotations

from agent.config import DockerMode, PoolConfig
from agent.container import dind
from agent.container.disk import job_disk
from agent.container.docker_api import DiskUsage
from agent.container.lifecycle import Runner
from agent.container.runner_spec import container_spec
from agent.github.client import RunnerTarget


def _pool(**settings: object) -> PoolConfig:
    return PoolConfig(
        name="p",
        labels=("self-hosted",),
        docker=DockerMode.DIND,
        allow_privileged_sidecar=True,
        **settings,  # type: ignore[arg-type]
    )


def _runner(**settings: object) -> Runner:
    return Runner(
        name="gantryd-x-1",
        pool="p",
        target=RunnerTarget(repository="o/r"),
        installation_id=None,
        labels=("self-hosted",),
        created_at=0.0,
        **settings,  # type: ignore[arg-type]
    )


def test_daemon_makes_no_bridge_in_the_hosts_namespace() -> None:
    assert "--bridge=none" in dind.daemon_command(_pool(network="host"))
    assert "--iptables=false" in dind.daemon_command(_pool(network="none"))
    default = dind.daemon_command(_pool(registry_mirror="https://m.example"))
    assert "--bridge=none" not in default  # its own bridge, in the pair's own namespace
    assert default[-1] == "--registry-mirror=https://m.example"
    assert f"--host={dind.DOCKER_HOST}" in default and "--group=123" in default


def test_sidecar_options_privileged_or_every_capability_but_sys_resource() -> None:
    labels = {"io.gantryd.runner": "gantryd-x-1"}
    privileged = dind.sidecar_spec("gantryd-x-1", _pool(), runner_container="c1", labels=labels)
    assert privileged.host.privileged and not privileged.host.cap_add
    assert privileged.host.network_mode == "container:c1"
    assert privileged.labels[dind.ROLE_LABEL] == dind.SIDECAR_ROLE
    assert privileged.host.memory == privileged.host.memory_swap == 2 * 1024**3
    assert {m.target for m in privileged.host.named_volumes} == set(
        dind.volume_names("gantryd-x-1")
    )
    capable = dind.sidecar_spec(
        "gantryd-x-1", _pool(docker_privileged=False), runner_container="c1", labels=labels
    )
    assert not capable.host.privileged and capable.host.unmasked_paths
    assert "SYS_ADMIN" in capable.host.cap_add and "SYS_RESOURCE" not in capable.host.cap_add
    assert "seccomp=unconfined" in capable.host.security_opt
    assert capable.environment["GANTRYD_DIND_CGROUPS"] == "remount"


def test_runner_keeps_its_profile_and_gets_only_the_shared_volumes() -> None:
    runner = _runner(sidecar=True)
    spec = container_spec(runner, _pool(), instance="i")
    assert not spec.host.privileged and spec.host.cap_drop == ("ALL",)
    assert spec.environment["DOCKER_HOST"] == dind.DOCKER_HOST
    assert {m.target for m in spec.host.named_volumes} == {
        dind.SOCKET_DIR,
        dind.WORK_DIR,
        dind.EXTERNALS_DIR,
    }
    plain = container_spec(_runner(), _pool(), instance="i")  # made before a reload to dind
    assert not plain.host.named_volumes and "DOCKER_HOST" not in plain.environment


def test_job_disk_counts_the_shared_volumes_once() -> None:
    names = dind.volume_names("gantryd-x-1")
    volumes = {names[dind.WORK_DIR]: 100, names[dind.EXTERNALS_DIR]: 10, names[dind.DATA_DIR]: 500}
    usage = DiskUsage(containers={"r": 5 + 100 + 10, "s": 7 + 100 + 10 + 500}, volumes=volumes)
    assert job_disk(usage, _runner(container_id="r", sidecar_id="s")) == 5 + 100 + 10 + 7 + 500
    assert job_disk(usage, _runner(container_id="r")) == 115
    assert job_disk(usage, _runner(container_id="gone")) is None
