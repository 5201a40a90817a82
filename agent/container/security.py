"""Hardening profiles turned into Docker create options (docs/design.md §6).

``strict`` (the default): non-root, every capability dropped, no-new-privileges, Docker's default
seccomp profile, capped pids/memory (swap equal to memory, so none)/CPU, ``nofile`` and ``core=0``
ulimits, an init process, size-capped tmpfs for /tmp, a capped json-file log, and a read-only
root filesystem when the pool asks for it.

``sudo``: as ``strict``, but without no-new-privileges and with the three capabilities ``sudo``
itself needs (``SUDO_CAPABILITIES``), so the official image's passwordless ``sudo`` works. A job
can then become root inside its container; root there holds only those capabilities (no
CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_NET_ADMIN, ...). Found by testing ``sudo -n true`` and
``sudo apt-get --version`` in the official-like image (tests/container/test_security.py):
without SETUID/SETGID sudo cannot switch to root, without AUDIT_WRITE it warns on every call.

``compat`` keeps Docker's default capability set and the image's own user; it is still never
privileged, never shares the host's PID/IPC namespaces, and never gets the Docker socket.

A read-only root filesystem: the official image writes into /home/runner on every start (run.sh
copies its helper there; the Listener writes ``.runner``, ``.credentials``, ``_diag/``), and the
job's ``_work`` and ``_tool`` live there too. So /home/runner becomes a per-job anonymous Docker
volume: Docker copies the image's /home/runner (content, owner, mode) into it when the container
is created, and removes it with the container (``DockerAPI.remove`` passes ``v``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import PoolConfig, SecurityProfile

RUNNER_UID = "1001"  # the official image's `runner` user (docs/github.md §8.1)
RUNNER_HOME = "/home/runner"  # where the official image's runner writes (docs/official-runner.md)
RUN_TMPFS_SIZE = 16 * 1024 * 1024
LOG_MAX_SIZE = "10m"
LOG_MAX_FILES = "3"
# setuid/setgid: sudo switching to root; audit_write: sudo's audit record of each command.
SUDO_CAPABILITIES = ("AUDIT_WRITE", "SETGID", "SETUID")


@dataclass(frozen=True, kw_only=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True, kw_only=True)
class VolumeMount:
    """An anonymous volume: created with the container from the image's content at ``target``,
    removed with it; ``labels`` let garbage collection find one left behind."""

    target: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class NamedMount:
    """A named volume gantryd created (and removes) itself, mounted at ``target``: how a
    runner and its Docker sidecar share paths (agent/container/dind.py)."""

    source: str
    target: str


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
    cap_add: tuple[str, ...] = ()
    tmpfs: dict[str, str] = field(default_factory=dict)
    volumes: tuple[VolumeMount, ...] = ()
    named_volumes: tuple[NamedMount, ...] = ()
    # Only a pool's Docker sidecar (``docker = "dind"``); a runner container never.
    privileged: bool = False
    # No masked or read-only /proc paths (``--security-opt systempaths=unconfined``): sidecar only.
    unmasked_paths: bool = False
    # Bytes the writable layer may hold (``--storage-opt size``); DockerAPI.create drops it
    # where the storage driver cannot enforce it (overlay2 needs xfs with pquota).
    storage_size: int | None = None
    network_mode: str | None = None
    log_config: dict[str, Any] = field(default_factory=dict)
    init: bool = True


def _network_mode(network: str) -> str | None:
    return None if network == "default" else network


def _capabilities(profile: SecurityProfile) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """(user, cap_drop, cap_add) of a profile."""
    if profile is SecurityProfile.STRICT:
        return RUNNER_UID, ("ALL",), ()
    if profile is SecurityProfile.SUDO:
        return RUNNER_UID, ("ALL",), SUDO_CAPABILITIES
    return None, (), ()


def host_options(pool: PoolConfig) -> HostOptions:
    """The create options for one runner container of this pool."""
    user, cap_drop, cap_add = _capabilities(pool.security)
    tmpfs = {"/tmp": f"rw,nosuid,nodev,size={pool.tmp_size}"}
    volumes: tuple[VolumeMount, ...] = ()
    if pool.read_only_rootfs:
        tmpfs["/run"] = f"rw,nosuid,nodev,noexec,size={RUN_TMPFS_SIZE}"
        volumes = (VolumeMount(target=RUNNER_HOME),)
    return HostOptions(
        user=user,
        cap_drop=cap_drop,
        cap_add=cap_add,
        security_opt=("no-new-privileges:true",) if pool.security is SecurityProfile.STRICT else (),
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
        volumes=volumes,
        storage_size=pool.disk_limit or None,
        network_mode=_network_mode(pool.network),
        log_config={
            "type": "json-file",
            "config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES},
        },
    )
