"""Runner images per ``pull_policy``: present, pulled once at a time, their digests recorded.

``if_not_present`` pulls only what the Engine lacks, ``always`` pulls before every runner,
``never`` refuses to start a runner whose image is missing. Two runners of one image never pull
it twice at once (a lock per image); the digest each ran is kept for its job's report.

A tag that moves (``:latest``, or no tag) under ``if_not_present`` is re-checked at the
registry every ``pull_interval``: without it a host keeps the image it first pulled forever, and
each container self-updates by download until GitHub refuses the version. A failed re-check
keeps the local image (logged); only a missing image fails the runner.

An image GitHub refused as deprecated (exit 7, ``PoolStats.outdated``) is refreshed by
``refresh``: pulled (unless ``never``) and inspected again; a new id ends the hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from agent.config import PoolConfig, PullPolicy
from agent.container.docker_api import DockerAPI, DockerError
from agent.container.lifecycle import PoolStats

log = logging.getLogger(__name__)


def moving_tag(image: str) -> bool:
    """Whether ``image`` names a tag that may point at another image tomorrow: no digest pin and
    the tag is ``latest`` or absent."""
    if "@" in image:
        return False
    last = image.rsplit("/", 1)[-1]
    return ":" not in last or last.rsplit(":", 1)[1] == "latest"


def pull_due(
    policy: PullPolicy,
    image: str,
    *,
    present: bool,
    last_check: float | None,
    now: float,
    interval: float,
) -> bool:
    """Whether a runner start must pull ``image`` first (``last_check``: this process's last
    pull of it, None if none)."""
    if policy is PullPolicy.NEVER:
        return False
    if policy is PullPolicy.ALWAYS or not present:
        return True
    if not moving_tag(image):
        return False
    return last_check is None or now - last_check >= interval


class Images:
    """The pool manager's image pulls; ``stats.image_digests`` holds the digest last seen."""

    def __init__(self, docker: DockerAPI, stats: PoolStats, clock: Callable[[], float]) -> None:
        self._docker = docker
        self._stats = stats
        self._clock = clock
        self._pull_locks: dict[str, trio.Lock] = {}
        self._checked: dict[str, float] = {}  # image -> when this process last pulled it

    async def ensure(self, pool: PoolConfig) -> str:
        """Pull per ``pull_policy`` (one pull per image at a time); return the digest.
        Raises DockerError naming the image when it is missing or its pull fails."""
        lock = self._pull_locks.setdefault(pool.image, trio.Lock())
        async with lock:
            digest = await self._docker.image_digest(pool.image)
            if digest is None and pool.pull_policy is PullPolicy.NEVER:
                raise DockerError(f"image {pool.image} is not present and pull_policy is never")
            due = pull_due(
                pool.pull_policy,
                pool.image,
                present=digest is not None,
                last_check=self._checked.get(pool.image),
                now=self._clock(),
                interval=pool.pull_interval,
            )
            if due:
                try:
                    digest = await self._pull(pool)
                except DockerError as exc:
                    if digest is None or pool.pull_policy is PullPolicy.ALWAYS:
                        raise DockerError(f"image pull failed for {pool.image}: {exc}") from exc
                    log.warning(
                        "re-checking image=%s failed, keeping the local one: %s", pool.image, exc
                    )
            assert digest is not None
            self._stats.image_digests[pool.image] = digest
            return digest

    async def refresh(self, pool: PoolConfig) -> str | None:
        """Pull ``pool``'s image again (not under ``never``: then only look) and return the
        digest now present, None when it is missing; a failed pull is logged, not raised."""
        lock = self._pull_locks.setdefault(pool.image, trio.Lock())
        async with lock:
            if pool.pull_policy is not PullPolicy.NEVER:
                try:
                    await self._pull(pool)
                except DockerError as exc:
                    log.warning("refreshing outdated image=%s failed: %s", pool.image, exc)
            return await self._docker.image_digest(pool.image)

    async def _pull(self, pool: PoolConfig) -> str:
        log.info("pulling image=%s pool=%s", pool.image, pool.name)
        self._checked[pool.image] = self._clock()  # a failed check waits its interval too
        digest = await self._docker.pull(
            pool.image, on_progress=lambda line: log.info("pull %s: %s", pool.image, line)
        )
        log.info("pulled image=%s digest=%s", pool.image, digest)
        return digest
