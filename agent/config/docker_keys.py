"""The ``[[pool]]`` keys of Docker inside jobs (``docker = "dind"``), validated together.

``docker = "dind"`` gives each runner a privileged sidecar running a Docker daemon of its own
(agent/container/dind.py). Privileged is root on the host for whoever controls that daemon, and
every job does, so a pool must say it accepts that (``allow_privileged_sidecar``); without it
the key is refused with that reason. The sidecar's limits count with the runner's.
"""

from __future__ import annotations

import os
import re
from typing import Any

from agent.config._table import Table
from agent.config.schema import DockerMode, PoolConfig

_DOCKER_MIN_MEMORY = 64 * 1024 * 1024  # a Docker daemon does not start in less
_MIRROR = re.compile(r"https?://[^\s/]+(/\S*)?")
_KEYS = (
    "docker_image",
    "docker_privileged",
    "docker_memory",
    "docker_cpus",
    "docker_pids_limit",
    "registry_mirror",
)


def docker_keys(t: Table, d: PoolConfig) -> dict[str, Any]:
    """The pool's Docker keys as ``PoolConfig`` arguments; warns where they have no effect."""
    mode = t.choice("docker", d.docker)
    allowed = t.boolean("allow_privileged_sidecar", d.allow_privileged_sidecar)
    if mode is DockerMode.DIND and not allowed:
        raise t.error(
            "docker",
            '"dind" runs a privileged sidecar (a Docker daemon cannot run without it, and '
            "every job of the pool then controls a root-equivalent daemon on this host); "
            "this pool's profile forbids privileged containers: set "
            "allow_privileged_sidecar = true in this pool to accept that",
        )
    if mode is DockerMode.NONE:
        for key in (*_KEYS, "allow_privileged_sidecar"):
            if t.has(key):
                t.warn(key, 'has no effect with docker = "none"')
    host_cpus = os.cpu_count() or 1
    return {
        "docker": mode,
        "allow_privileged_sidecar": allowed,
        "docker_image": t.string(
            "docker_image", d.docker_image, pattern=re.compile(r"\S+"), rule="an image reference"
        ),
        "docker_privileged": t.boolean("docker_privileged", d.docker_privileged),
        "docker_memory": t.size("docker_memory", d.docker_memory, minimum=_DOCKER_MIN_MEMORY),
        "docker_cpus": t.number(
            "docker_cpus",
            d.docker_cpus,
            minimum=0.01,
            maximum=host_cpus,
            why=f" (this host has {host_cpus} CPUs)",
        ),
        "docker_pids_limit": t.integer("docker_pids_limit", d.docker_pids_limit, minimum=64),
        "registry_mirror": t.string(
            "registry_mirror",
            d.registry_mirror,
            pattern=_MIRROR,
            rule='a registry URL, e.g. "https://mirror.example:5000"',
        ),
    }
