"""What several benchmarks read the same way: a free loopback port, a process's CPU time and
RSS from /proc, and the containers a run left on the engine."""

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


def leftovers(client: docker.DockerClient, instance: str, tag: str) -> list[str]:
    """Containers of gantryd's ``instance`` or of the baseline's ``tag`` still on the engine."""
    found = client.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"})
    found += client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={tag}"})
    return [f"{c.name} ({c.status})" for c in found]
