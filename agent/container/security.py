"""Hardening profiles turned into Docker create options (docs/design.md §6).

``strict`` (the default): non-root, every capability dropped, no-new-privileges, Docker's default
seccomp profile, capped pids/memory (swap equal to memory, so none)/CPU, ``nofile`` and ``core=0``
ulimits, an init process, size-capped tmpfs for /tmp, a capped json-file log, and a read-only
root filesystem when the pool asks for it (the official runner image writes its config into
/home/runner, so that is opt-in per pool).

``compat`` keeps Docker's default capability set and allows setuid (for images whose jobs use
``sudo``); it is still never privileged, never shares the host's PID/IPC namespaces, and never
gets the Docker socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.config import PoolConfig, SecurityProfile

RUNNER_UID = "1001"  # the official image's `runner` user (docs/github.md §8.1)
RUN_TMPFS_SIZE = 16 * 1024 * 1024
LOG_MAX_SIZE = "10m"
LOG_MAX_FILES = "3"


@dataclass(frozen=True, kw_only=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True, kw_only=True)
class HostOptions:
    """What security and limits ask of Docker, independent of docker-py's types."""

    user: str | None
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    read_only: bool
    pids_limit: int
    memory: int
    memory_swap: int
    nano_cpus: int
    ulimits: tuple[Ulimit, ...]
    tmpfs: dict[str, str] = field(default_factory=dict)
    network_mode: str | None = None
    log_config: dict[str, Any] = field(default_factory=dict)
    init: bool = True


def _network_mode(network: str) -> str | None:
    return None if network == "default" else network


def host_options(pool: PoolConfig) -> HostOptions:
    """The create options for one runner container of this pool."""
    strict = pool.security is SecurityProfile.STRICT
    tmpfs = {"/tmp": f"rw,nosuid,nodev,size={pool.tmp_size}"}
    if pool.read_only_rootfs:
        tmpfs["/run"] = f"rw,nosuid,nodev,noexec,size={RUN_TMPFS_SIZE}"
    return HostOptions(
        user=RUNNER_UID if strict else None,
        cap_drop=("ALL",) if strict else (),
        security_opt=("no-new-privileges:true",) if strict else (),
        read_only=pool.read_only_rootfs,
        pids_limit=pool.pids_limit,
        memory=pool.memory,
        memory_swap=pool.memory,
        nano_cpus=int(pool.cpus * 1e9),
        ulimits=(
            Ulimit(name="nofile", soft=pool.nofile, hard=pool.nofile),
            Ulimit(name="core", soft=0, hard=0),
        ),
        tmpfs=tmpfs,
        network_mode=_network_mode(pool.network),
        log_config={
            "type": "json-file",
            "config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES},
        },
    )
