"""What several benchmarks read the same way: a free loopback port, a process's CPU time and
RSS from /proc, and the containers and volumes a run left on the engine."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import docker

from agent.container.docker_api import INSTANCE_LABEL

BENCH_LABEL = "io.gantryd.bench"  # on the baseline's own containers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB, from /proc/<pid>/status."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def remove_instance(client: docker.DockerClient, instance: str) -> list[str]:
    """Remove what a stopped daemon of ``instance`` left (it leaves its runners on SIGTERM, by
    design: the next start adopts them; no later instance would): its containers with their
    anonymous volumes, then any volume still labelled with it. The names of what was removed."""
    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}):
        removed.append(f"container {c.name} ({c.status})")
        c.remove(force=True, v=True)  # v: /home/runner's volume under read_only_rootfs
    for v in client.volumes.list(filters={"label": f"{INSTANCE_LABEL}={instance}"}):
        removed.append(f"volume {v.name}")
        v.remove(force=True)
    return removed


def leftovers(client: docker.DockerClient, instance: str, tag: str) -> list[str]:
    """Containers and volumes of gantryd's ``instance`` or of the baseline's ``tag`` still on
    the engine."""
    found = []
    for label in (f"{INSTANCE_LABEL}={instance}", f"{BENCH_LABEL}={tag}"):
        found += [
            f"container {c.name} ({c.status})"
            for c in client.containers.list(all=True, filters={"label": label})
        ]
        found += [f"volume {v.name}" for v in client.volumes.list(filters={"label": label})]
    return found
