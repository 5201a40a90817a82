"""Garbage collection of gantryd's Docker objects (docs/design.md §6).

Only objects carrying ``io.gantryd.managed=true`` and this host's ``io.gantryd.instance`` are
ever looked at, so another gantryd (or another test run) on the same Engine and anything without
gantryd's labels are never touched. A container is removed when no runner of the state database
has its name, or when it is past its ``io.gantryd.expires`` label; volumes and networks likewise.
Removing a known runner's expired container makes Docker report it dead, and the supervisor then
deals with its runner as for any exit.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from agent.container.docker_api import (
    EXPIRES_LABEL,
    RUNNER_LABEL,
    DockerAPI,
    DockerError,
)

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Collected:
    """What one pass removed, by name."""

    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.containers) + len(self.volumes) + len(self.networks)


def _expired(labels: Mapping[str, str], now: float) -> bool:
    raw = labels.get(EXPIRES_LABEL)
    try:
        return raw is not None and float(raw) < now
    except ValueError:
        return True  # a managed object with a mangled expiry is no one's


async def collect_garbage(
    docker: DockerAPI, *, instance: str, known: Collection[str], now: float
) -> Collected:
    """One pass: remove this instance's managed objects that no known runner owns or that
    are past their expiry. ``known`` holds runner names. Docker errors on single objects are
    logged and left for the next pass."""
    collected = Collected()
    for container in await docker.list_managed(instance=instance):
        labels = container.labels
        owner = labels.get(RUNNER_LABEL, "")
        if owner in known and not _expired(labels, now):
            continue
        why = "past its expiry" if owner in known else "unknown to the state database"
        try:
            if await docker.remove(container.id):
                log.info("gc: removed container %s (%s)", container.name, why)
                collected.containers.append(container.name)
        except DockerError as exc:
            log.warning("gc: cannot remove container %s: %s", container.name, exc)
    for obj in await docker.list_managed_objects(instance=instance):
        labels = obj.labels
        if labels.get(RUNNER_LABEL, "") in known and not _expired(labels, now):
            continue
        try:
            if await docker.remove_object(obj):
                log.info("gc: removed %s %s", obj.kind, obj.name)
                (collected.volumes if obj.kind == "volume" else collected.networks).append(obj.name)
        except DockerError as exc:
            log.warning("gc: cannot remove %s %s: %s", obj.kind, obj.name, exc)
    return collected
