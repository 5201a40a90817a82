"""Bringing a runner up: image, JIT registration at GitHub, container, stdin, start.

The runner's row is written before GitHub knows it (a crash then leaves a name the next start
can clean up), and again once it is registered. The JIT config and the pool's secrets go in on
the container's stdin (``secret_injection``), never in its environment. Any GitHub, Docker or
secrets error fails the runner and counts an attempt against its job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping

import trio

from agent.config import PoolConfig
from agent.container import dind
from agent.container.docker_api import DockerAPI, DockerError
from agent.container.images import Images
from agent.container.lifecycle import (
    Outcome,
    PoolObserver,
    PoolStats,
    Runner,
    RunnerState,
    StartKind,
)
from agent.container.registry import Registry
from agent.container.removal import Removal
from agent.container.runner_spec import container_spec, runner_labels
from agent.container.secret_injection import injection
from agent.github.client import GitHubClient, GitHubError, JitConfig
from agent.secrets import SecretsError, SecretStore

log = logging.getLogger(__name__)

# A scale-set pool's runners register inside its scale set: name -> JIT config (the listener's).
JitSource = Callable[[str], Awaitable[JitConfig]]


class Provisioner:
    """Starts runners the pool manager has counted; at most ``limiter``'s total at once."""

    def __init__(
        self,
        *,
        github: GitHubClient,
        docker: DockerAPI,
        registry: Registry,
        removal: Removal,
        images: Images,
        secrets: SecretStore | None,
        stats: PoolStats,
        observer: PoolObserver,
        clock: Callable[[], float],
        instance: str,
        limiter: trio.CapacityLimiter,
        jit_sources: Mapping[str, JitSource] | None = None,
    ) -> None:
        self._github = github
        self._docker = docker
        self._registry = registry
        self._removal = removal
        self._images = images
        self._secrets = secrets
        self._stats = stats
        self._observer = observer
        self._clock = clock
        self._instance = instance
        self._limiter = limiter
        self._jit_sources = jit_sources or {}

    async def provision(self, runner: Runner, pool: PoolConfig) -> None:
        """Register and start ``runner`` (already in the registry, CREATING) as an IDLE one."""
        await self._registry.save(runner)  # before GitHub knows it: a crash leaves a name
        async with self._limiter:
            try:
                await self._bring_up(runner, pool)
            except (GitHubError, DockerError, SecretsError) as exc:
                if self._gone(runner):
                    await self._discard(runner)
                    return
                self._stats.outcomes[Outcome.PROVISION_FAILED] += 1
                if isinstance(exc, dind.SidecarFailed):
                    self._stats.outcomes[Outcome.DIND_FAILED] += 1
                await self._removal.fail(runner, str(exc))
                return
        if self._gone(runner):
            await self._discard(runner)
            return
        self._stats.outcomes[Outcome.CREATED] += 1
        if runner.state is RunnerState.STARTING:
            runner.move(RunnerState.IDLE, now=self._clock())
        if runner.made_for is not None and runner.assigned_at is not None:
            waited = self._clock() - runner.assigned_at
            self._observer.container_started(runner.pool, StartKind.COLD, waited)
        await self._registry.save(runner)
        log.info(
            "runner started runner=%s pool=%s job=%s target=%s",
            runner.name,
            runner.pool,
            runner.made_for,
            runner.target.path,
        )

    async def _discard(self, runner: Runner) -> None:
        """The runner was scaled down while it was brought up (its job ended elsewhere):
        delete the registration and container made after that (GitHub first)."""
        log.info("runner %s was scaled down while starting: removing it", runner.name)
        await self._removal.deregister(runner)
        await self._removal.remove_container(runner)

    async def _jit_config(self, runner: Runner, pool: PoolConfig) -> JitConfig:
        """From the pool's scale set if it has one, else GitHub's REST generate-jitconfig."""
        source = self._jit_sources.get(pool.name)
        if source is not None:
            return await source(runner.name)
        return await self._github.generate_jitconfig(
            runner.target,
            name=runner.name,
            labels=pool.labels,
            # 1 at repository scope; an organization's group looked up by name
            runner_group_id=await self._github.runner_group_id(
                runner.target, pool.runner_group, installation_id=runner.installation_id
            ),
            installation_id=runner.installation_id,
        )

    def _gone(self, runner: Runner) -> bool:
        """Scaled down while it was brought up (its job ended elsewhere meanwhile)."""
        return runner.state is RunnerState.REMOVED or runner not in self._registry

    async def _bring_up(self, runner: Runner, pool: PoolConfig) -> None:
        """Each step is skipped once the runner is `_gone`; ``provision`` then discards it."""
        runner.image_digest = await self._images.ensure(pool)
        if runner.sidecar:  # the same pull policy for the sidecar's image
            await self._images.ensure(dataclasses.replace(pool, image=pool.docker_image))
        jit = await self._jit_config(runner, pool)
        runner.runner_id = jit.runner_id
        if self._gone(runner):
            return
        await self._registry.save(runner)
        labels = runner_labels(runner, pool, instance=self._instance)
        if runner.sidecar:
            await dind.create_volumes(self._docker, runner.name, labels)
        runner.container_id = await self._docker.create(
            container_spec(runner, pool, instance=self._instance)
        )
        if runner.sidecar:
            runner.sidecar_id = await self._docker.create(
                dind.sidecar_spec(
                    runner.name, pool, runner_container=runner.container_id, labels=labels
                )
            )
        if self._gone(runner):
            return
        runner.move(RunnerState.STARTING, now=self._clock())
        frame = await injection(
            self._secrets, pool.secrets, runner=runner.name, job=runner.made_for
        )
        if self._gone(runner):
            return
        await self._docker.start_with_stdin(
            runner.container_id, jit.encoded.reveal().encode("ascii") + b"\n" + frame
        )
        if runner.sidecar_id is not None:  # it joins the runner's network: started after it
            started = self._clock()
            await dind.start_sidecar(self._docker, runner.sidecar_id)
            self._observer.container_started(runner.pool, StartKind.DIND, self._clock() - started)
