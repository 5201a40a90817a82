"""The per-job disk limit (``disk_limit``): measured, and a job past it stopped.

Where the storage driver can enforce a size (overlay2 on xfs with pquota), ``DockerAPI.create``
passes ``--storage-opt size`` and writes past it fail with ENOSPC inside the job. Elsewhere
(overlay2 on ext4, the common case) nothing in Docker stops a job filling ``/var/lib/docker``,
so this watcher measures: one ``/system/df`` every ``DISK_INTERVAL`` seconds gives every
container's writable layer and volumes (the /home/runner volume of a read-only root) at once;
a runner whose container holds more than its pool's ``disk_limit`` is stopped like a job past
``job_timeout``, with the reason "disk limit exceeded". The volume is not covered by the
storage driver's size, so it is measured even where the driver enforces one.

gantryd runs as an unprivileged user in the ``docker`` group: it cannot read
``/var/lib/docker`` itself, so the Engine does the walking.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import trio

from agent.config import PoolConfig
from agent.config.values import approx_size, format_size
from agent.container import dind
from agent.container.docker_api import DiskUsage, DockerAPI, DockerError
from agent.container.lifecycle import Runner

log = logging.getLogger(__name__)

DISK_INTERVAL = 10.0  # seconds between measurements; each walks every layer and volume
DISK_REASON = "disk limit exceeded"


def over_limit(used: int | None, pool: PoolConfig) -> str | None:
    """The reason to stop a runner whose container holds ``used`` bytes, or None."""
    if not pool.disk_limit or used is None or used <= pool.disk_limit:
        return None
    limit = format_size(pool.disk_limit)
    return f"{DISK_REASON}: {approx_size(used)} written, disk_limit is {limit}"


def job_disk(usage: DiskUsage, runner: Runner) -> int | None:
    """What a job holds on disk: its runner container's layer and volumes, plus, with a Docker
    sidecar, the sidecar's layer and the inner daemon's data (the volumes both mount count
    once). None when Docker does not list the runner's container."""
    if runner.container_id is None or runner.container_id not in usage.containers:
        return None
    used = usage.containers[runner.container_id]
    if runner.sidecar_id is not None and runner.sidecar_id in usage.containers:
        shared = sum(
            usage.volumes.get(name, 0)
            for path, name in dind.volume_names(runner.name).items()
            if path != dind.DATA_DIR
        )
        used += usage.containers[runner.sidecar_id] - shared
    return used


def _watched(runner: Runner, pool: PoolConfig | None) -> bool:
    return (
        pool is not None
        and bool(pool.disk_limit)
        and runner.container_id is not None
        and runner.exited_at is None
        and not runner.disk_exceeded
    )


async def watch_disk(
    docker: DockerAPI,
    runners: Callable[[], Iterable[Runner]],
    pool_of: Callable[[str], PoolConfig | None],
    stop: Callable[[Runner, PoolConfig, str], Awaitable[None]],
    *,
    interval: float = DISK_INTERVAL,
) -> None:
    """Every ``interval``, measure the containers of runners whose pool has a ``disk_limit``
    and ``stop`` each one past it (once: ``stop`` sets ``disk_exceeded``). Runs until
    cancelled; a Docker error skips one measurement."""
    while True:
        await trio.sleep(interval)
        watched = [(r, pool_of(r.pool)) for r in runners()]
        if not any(_watched(runner, pool) for runner, pool in watched):
            continue
        try:
            usage = await docker.disk_usage()
        except DockerError as exc:
            log.warning("disk usage: Docker error, next measurement in %gs: %s", interval, exc)
            continue
        for runner, pool in watched:
            if pool is None or not _watched(runner, pool) or runner.container_id is None:
                continue
            reason = over_limit(job_disk(usage, runner), pool)
            if reason is not None:
                await stop(runner, pool, reason)
