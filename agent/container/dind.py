"""Docker inside jobs (``docker = "dind"``): a Docker daemon of its own beside each runner.

The runner never gets the host's Docker socket. Its sidecar, a container of the pool's
``docker_image`` running ``dockerd``, serves a socket in a per-job volume that both mount at
``SOCKET_DIR``; the runner finds it through ``DOCKER_HOST`` and waits for it
(``RUNNER_WAIT_FOR_DOCKER_IN_SECONDS``, read by the official image's run-helper.sh). Jobs ask the
inner daemon to bind-mount ``_work`` (and ``externals``) into their containers by the runner's
paths, which the inner daemon resolves in *its* filesystem: so both containers mount the same
per-job volumes at the same paths, as ARC's dind mode shares them. The daemon's data is one more
per-job volume. Nothing else is shared: no host path, no host socket.

The sidecar joins the runner's network namespace (``network_mode = container:<runner>``): the
inner daemon and every container a job starts through it live in the network the pool gave the
runner, so nothing new appears on the host. On a pool whose runners share the host's network
(``network = "host"``) or have none, the inner daemon creates no bridge and no iptables rules
(``--bridge=none --iptables=false``), and job containers use ``--network none`` or the shared
namespace. The job's containers sit inside the sidecar's cgroup: its memory, CPU and pids limits
bound them, and the pair counts ``memory + docker_memory`` against the host budget.

Order: the runner is created first (a volume is filled from the image that first mounts it
empty: ``externals`` comes from the runner image), then the sidecar, then the runner is started
(a ``container:`` network needs its owner running), then the sidecar, whose daemon gantryd
waits for ("API listen on" in its log) before calling the runner started. A daemon that does not
come up is the job's infrastructure failure, with the daemon's last log lines as the reason.
Removal is the reverse: runner, sidecar, volumes. Names derive from the runner's (``<name>-dind``,
``<name>-work``, ...), so the runner's row in the state database (saved before anything is
created, with ``sidecar`` set) names everything that may exist; all of it carries the runner's
labels, so garbage collection finds what a crash left.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from agent.config import PoolConfig
from agent.container.docker_api import ContainerSpec, DockerAPI, DockerError
from agent.container.security import (
    LOG_MAX_FILES,
    LOG_MAX_SIZE,
    RUNNER_HOME,
    RUNNER_UID,
    HostOptions,
    NamedMount,
    Ulimit,
)

log = logging.getLogger(__name__)

ROLE_LABEL = "io.gantryd.role"  # "dind" on a sidecar; runner containers have none
SIDECAR_ROLE = "dind"
SOCKET_DIR = "/run/gantryd-dind"  # not /var/run/docker: dockerd keeps its exec-root there
DOCKER_HOST = f"unix://{SOCKET_DIR}/docker.sock"
DOCKER_GID = "123"  # the official image's `docker` group, which its runner user is in
DATA_DIR = "/var/lib/docker"
WORK_DIR = f"{RUNNER_HOME}/_work"
EXTERNALS_DIR = f"{RUNNER_HOME}/externals"
# run-helper.sh polls `docker ps` once a second for this long before starting the Listener.
RUNNER_WAIT_SECONDS = 120  # as ARC sets it for its dind mode
READY_TIMEOUT = 120.0  # seconds gantryd waits for the inner daemon's "API listen on"
READY_LINE = "API listen on"
LOG_LINES = 15  # of the daemon's log, in the reason of a failed start
# docker_privileged = false: Docker's capability list without SYS_RESOURCE, the one an Engine
# started with a reduced bounding set lacks (then --privileged fails: "unable to apply caps").
UNPRIVILEGED_CAPABILITIES = (
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "CHOWN", "DAC_OVERRIDE",
    "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
    "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN",
    "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO",
    "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM",
)  # fmt: skip
UNCONFINED = ("seccomp=unconfined", "apparmor=unconfined")  # and no masked /proc paths

# The sidecar's entrypoint (sh -c SCRIPT sh dockerd ...): hand _work to the runner user (the
# volume starts root-owned and empty: the official image has no _work), make the cgroup
# hierarchies writable where --privileged did not (the inner daemon puts the job's containers
# in cgroups below its own), then dockerd through docker:dind's entrypoint when present.
ENTRY_SCRIPT = (
    f"chown {RUNNER_UID}:{DOCKER_GID} {WORK_DIR} || exit 1; "
    'if [ "$GANTRYD_DIND_CGROUPS" = remount ]; then '
    "for d in /sys/fs/cgroup /sys/fs/cgroup/*/; do mount -o remount,bind,rw $d 2>/dev/null; done; "
    "fi; "
    "if command -v dockerd-entrypoint.sh >/dev/null 2>&1; then "
    'exec dockerd-entrypoint.sh "$@"; fi; '
    'exec "$@"'
)


class SidecarFailed(DockerError):
    """The runner's Docker daemon did not come up; the message carries its last log lines."""


def sidecar_name(runner: str) -> str:
    return f"{runner}-dind"


def volume_names(runner: str) -> dict[str, str]:
    """The per-job volumes of ``runner``'s pair, by the path they are mounted at."""
    return {
        SOCKET_DIR: f"{runner}-docker-sock",
        WORK_DIR: f"{runner}-work",
        EXTERNALS_DIR: f"{runner}-externals",
        DATA_DIR: f"{runner}-docker-data",
    }


def runner_mounts(runner: str) -> tuple[NamedMount, ...]:
    """What the runner container mounts: everything but the daemon's data."""
    return tuple(
        NamedMount(source=name, target=path)
        for path, name in volume_names(runner).items()
        if path != DATA_DIR
    )


def runner_environment() -> dict[str, str]:
    return {
        "DOCKER_HOST": DOCKER_HOST,
        "RUNNER_WAIT_FOR_DOCKER_IN_SECONDS": str(RUNNER_WAIT_SECONDS),
    }


def daemon_command(pool: PoolConfig) -> tuple[str, ...]:
    """dockerd's arguments: the shared socket for the runner's group (and the usual one in
    the sidecar, which the official runner mounts into a ``container:`` job's container), and
    no bridge or iptables rules where the runner's namespace is the host's (or has none)."""
    command = [
        "dockerd",
        f"--host={DOCKER_HOST}",
        "--host=unix:///var/run/docker.sock",
        f"--group={DOCKER_GID}",
        f"--data-root={DATA_DIR}",
    ]
    if pool.network in ("host", "none"):
        command += ["--bridge=none", "--iptables=false"]
    if pool.registry_mirror:
        command.append(f"--registry-mirror={pool.registry_mirror}")
    return tuple(command)


def sidecar_spec(
    runner: str, pool: PoolConfig, *, runner_container: str, labels: Mapping[str, str]
) -> ContainerSpec:
    """The sidecar of ``runner`` (whose container, already running, owns the network)."""
    privileged = pool.docker_privileged
    host = HostOptions(
        user=None,
        cap_drop=(),
        cap_add=() if privileged else UNPRIVILEGED_CAPABILITIES,
        security_opt=() if privileged else UNCONFINED,
        read_only=False,
        pids_limit=pool.docker_pids_limit,
        memory=pool.docker_memory,
        memory_swap=pool.docker_memory,
        nano_cpus=int(pool.docker_cpus * 1e9),
        ulimits=(
            Ulimit(name="nofile", soft=pool.nofile, hard=pool.nofile),
            Ulimit(name="core", soft=0, hard=0),
        ),
        named_volumes=tuple(
            NamedMount(source=name, target=path) for path, name in volume_names(runner).items()
        ),
        network_mode=f"container:{runner_container}",
        log_config={
            "type": "json-file",
            "config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES},
        },
        privileged=privileged,
        unmasked_paths=not privileged,  # --privileged unmasks them itself
    )
    return ContainerSpec(
        name=sidecar_name(runner),
        image=pool.docker_image,
        entrypoint=("/bin/sh", "-c", ENTRY_SCRIPT, "sh"),
        command=daemon_command(pool),
        labels={**labels, ROLE_LABEL: SIDECAR_ROLE},
        # docker:dind makes TLS certificates unless told not to; the socket is all it serves.
        environment={
            "DOCKER_TLS_CERTDIR": "",
            "GANTRYD_DIND_CGROUPS": "keep" if privileged else "remount",
        },
        host=host,
    )


async def create_volumes(docker: DockerAPI, runner: str, labels: Mapping[str, str]) -> None:
    for name in volume_names(runner).values():
        await docker.create_volume(name, labels)


async def start_sidecar(docker: DockerAPI, sidecar_id: str) -> None:
    """Start the sidecar and wait until its daemon listens; SidecarFailed (with the daemon's
    last log lines) when it exits first, does not answer within READY_TIMEOUT, or Docker
    refuses to start it."""
    try:
        await docker.start(sidecar_id)
    except DockerError as exc:
        raise SidecarFailed(f"the job's Docker daemon (sidecar) could not start: {exc}") from exc
    ready = False
    with trio.move_on_after(READY_TIMEOUT) as waited:
        ready = await docker.wait_for_log(sidecar_id, READY_LINE)
    if ready:
        return
    try:
        tail = await docker.logs_tail(sidecar_id, lines=LOG_LINES)
    except DockerError as exc:
        tail = f"(its log is unreadable: {exc})"
    why = f"did not listen within {READY_TIMEOUT:g}s" if waited.cancelled_caught else "exited"
    raise SidecarFailed(f"the job's Docker daemon (sidecar) {why}; its last log lines:\n{tail}")


async def remove_pair(docker: DockerAPI, runner: str, container_id: str | None) -> None:
    """Runner container, then sidecar, then volumes (a volume in use cannot go): each step
    only once the one before is done, so a crash or error in between leaves the rest for the
    next removal of the same row, or for garbage collection. DockerError propagates."""
    if container_id is not None:
        await docker.remove(container_id)
    await docker.remove(sidecar_name(runner))
    for name in volume_names(runner).values():
        await docker.remove_volume(name)
