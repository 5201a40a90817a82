"""The Docker Engine's own limits, read from ``/proc`` (``docker info`` omits them): its
open-files limit, and whether it can grant ``--privileged`` (``docker = "dind"`` sidecars).

A container's ``nofile`` above the hard limit dockerd runs with cannot be set: every container
of such a pool fails to start and its jobs die after their retries (issue 13 §11: 65536 asked,
20,000 allowed). Nothing is run: dockerd's pid comes from its pid file or a scan of
``/proc/*/comm``, its limit from ``/proc/<pid>/limits``; when neither is readable (another
host's Engine, another pid namespace, no permission) the caller is told why and skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PID_FILE = Path("/var/run/docker.pid")


@dataclass(frozen=True, kw_only=True)
class EngineLimit:
    hard: int | None  # None: unlimited
    source: Path  # the limits file read


def _dockerd_pid(proc: Path, pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        if (proc / str(pid) / "comm").read_text().strip() == "dockerd":
            return pid
    except (OSError, ValueError):
        pass
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "dockerd":
                return int(comm.parent.name)
        except (OSError, ValueError):
            continue
    return None


def engine_nofile_limit(proc: Path = Path("/proc"), pid_file: Path = PID_FILE) -> EngineLimit | str:
    """dockerd's hard ``Max open files``, or why it could not be read."""
    pid = _dockerd_pid(proc, pid_file)
    if pid is None:
        return "no dockerd process visible in /proc (remote Engine or another pid namespace)"
    source = proc / str(pid) / "limits"
    try:
        lines = source.read_text().splitlines()
    except OSError as exc:
        return f"cannot read {source}: {exc.strerror or exc}"
    for line in lines:
        if line.startswith("Max open files"):
            hard = line[len("Max open files") :].split()[1]
            return EngineLimit(hard=None if hard == "unlimited" else int(hard), source=source)
    return f"no 'Max open files' line in {source}"


def nofile_warnings(pools: dict[str, int], limit: EngineLimit) -> list[str]:
    """One warning per pool whose ``nofile`` the Engine cannot grant."""
    if limit.hard is None:
        return []
    return [
        f'pool "{name}".nofile: {nofile} is above the Docker Engine\'s own open-files limit '
        f"({limit.hard}, {limit.source}): every container of this pool would fail to start; "
        f"lower nofile to at most {limit.hard} or raise dockerd's LimitNOFILE"
        for name, nofile in pools.items()
        if nofile > limit.hard
    ]


def engine_missing_capabilities(
    proc: Path = Path("/proc"), pid_file: Path = PID_FILE
) -> list[str] | str:
    """Capabilities the kernel has that dockerd's bounding set lacks (``--privileged`` asks
    for every one: with any missing, runc fails "unable to apply caps"), or why unreadable."""
    pid = _dockerd_pid(proc, pid_file)
    if pid is None:
        return "no dockerd process visible in /proc (remote Engine or another pid namespace)"
    source = proc / str(pid) / "status"
    try:
        last = int((proc / "sys/kernel/cap_last_cap").read_text())
        status = source.read_text().splitlines()
    except (OSError, ValueError) as exc:
        return f"cannot read {source}: {exc}"
    bounding = next((line.split()[1] for line in status if line.startswith("CapBnd:")), None)
    if bounding is None:
        return f"no CapBnd line in {source}"
    held = int(bounding, 16)
    return [CAPABILITY_NAMES.get(bit, str(bit)) for bit in range(last + 1) if not held >> bit & 1]


def privileged_warnings(pools: list[str], missing: list[str]) -> list[str]:
    """One plain statement per pool whose Docker sidecar needs ``--privileged``."""
    if not missing:
        return []
    lacking = ", ".join(f"CAP_{name}" for name in missing)
    return [
        f'pool "{name}".docker_privileged: this Docker Engine cannot run privileged '
        f"containers (dockerd's capability bounding set lacks {lacking}): every job of this "
        "pool would fail at its Docker daemon's start; set docker_privileged = false (all "
        "capabilities but SYS_RESOURCE, unconfined) or start dockerd with every capability. "
        "Other pools are not affected"
        for name in pools
    ]


# linux/capability.h: the name of each capability bit, from 0
_CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
    "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
)
CAPABILITY_NAMES = dict(enumerate(_CAPABILITIES.split()))
