"""What a new runner of a pool is: its name and record, and the container it runs in.

The container spec gathers the pool's image, command, environment and limits (``security``),
the secrets tmpfs (``secret_injection``) and gantryd's labels: ``io.gantryd.managed`` and
``io.gantryd.instance`` let garbage collection and adoption find it, ``io.gantryd.runner``
names its runner, and ``io.gantryd.expires`` bounds how long it may outlive everything.
"""

from __future__ import annotations

import dataclasses
import secrets

from agent.config import DockerMode, PoolConfig
from agent.container import dind
from agent.container.docker_api import (
    EXPIRES_LABEL,
    INSTANCE_LABEL,
    MANAGED_LABEL,
    RUNNER_LABEL,
    ContainerSpec,
)
from agent.container.lifecycle import Runner
from agent.container.policy import DEPRECATED_EXIT_ENV, container_expiry
from agent.container.secret_injection import WRITE_SECRETS, with_secrets_mount
from agent.container.security import HostOptions, host_options
from agent.github.client import RunnerTarget
from agent.github.runners import RUNNER_ID_HEX, name_head

# The runner reads its JIT config from stdin, so it never shows in `docker inspect` (Env/Cmd).
# The variable stays in this shell's and run.sh's environment: only the Listener drops it, for
# its own process (docs/official-runner.md); the key it decodes to (`.credentials_rsaparams`)
# sits in /home/runner until the container is removed.
RUNNER_COMMAND = (
    "/bin/sh",
    "-c",
    "read -r ACTIONS_RUNNER_INPUT_JITCONFIG && export ACTIONS_RUNNER_INPUT_JITCONFIG"
    f" && {WRITE_SECRETS} && exec /home/runner/run.sh",  # secrets: files on a tmpfs
)


def new_runner(
    pool: PoolConfig,
    target: RunnerTarget,
    installation_id: int | None,
    *,
    prefix: str,
    instance: str,
    now: float,
) -> Runner:
    """A runner record for this pool, registered at ``target``; named ``prefix-instance-hex``
    so the registration sweep knows this host's runners at GitHub, and at most 64 characters
    long as GitHub requires (``name_head`` shortens a long prefix and instance)."""
    return Runner(
        name=name_head(prefix, instance) + secrets.token_hex(RUNNER_ID_HEX // 2),
        pool=pool.name,
        target=target,
        installation_id=installation_id,
        labels=pool.labels,
        created_at=now,
        state_since=now,
        memory=pool.job_memory,
        repository=target.repository,
        sidecar=pool.docker is DockerMode.DIND,
    )


def runner_labels(runner: Runner, pool: PoolConfig, *, instance: str) -> dict[str, str]:
    """The labels of everything made for ``runner``: container, sidecar, volumes."""
    return {
        **pool.docker_labels,
        MANAGED_LABEL: "true",
        INSTANCE_LABEL: instance,
        "io.gantryd.pool": pool.name,
        RUNNER_LABEL: runner.name,
        "io.gantryd.job": str(runner.made_for or ""),
        "io.gantryd.created": str(int(runner.created_at)),
        EXPIRES_LABEL: str(int(container_expiry(pool, runner.created_at))),
    }


def container_spec(runner: Runner, pool: PoolConfig, *, instance: str) -> ContainerSpec:
    """The create options of ``runner``'s container; with a sidecar (made under
    ``docker = "dind"``, whatever the pool says now) the shared volumes and ``DOCKER_HOST``."""
    labels = runner_labels(runner, pool, instance=instance)
    host = _labelled_volumes(host_options(pool), labels)
    environment = {**pool.env, **DEPRECATED_EXIT_ENV}
    if runner.sidecar:
        host = dataclasses.replace(host, named_volumes=dind.runner_mounts(runner.name))
        environment.update(dind.runner_environment())
    return ContainerSpec(
        name=runner.name,
        image=pool.image,
        command=RUNNER_COMMAND,
        labels=labels,
        environment=environment,
        host=with_secrets_mount(host, pool.secrets),
        stdin_open=True,
    )


def _labelled_volumes(host: HostOptions, labels: dict[str, str]) -> HostOptions:
    """The container's own volumes (/home/runner under read_only_rootfs) carry its gantryd
    labels, so garbage collection finds one that outlived its container."""
    keep = (MANAGED_LABEL, INSTANCE_LABEL, RUNNER_LABEL, EXPIRES_LABEL)
    own = {key: labels[key] for key in keep}
    volumes = tuple(dataclasses.replace(v, labels={**v.labels, **own}) for v in host.volumes)
    return dataclasses.replace(host, volumes=volumes)
