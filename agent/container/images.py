"""Runner images per ``pull_policy``: present, pulled once at a time, their digests recorded.

``if_not_present`` pulls only what the Engine lacks, ``always`` pulls before every runner,
``never`` refuses to start a runner whose image is missing. Two runners of one image never pull
it twice at once (a lock per image); the digest each ran is kept for its job's report.
"""

from __future__ import annotations

import logging

import trio

from agent.config import PoolConfig
from agent.container.docker_api import DockerAPI, DockerError
from agent.container.lifecycle import PoolStats

log = logging.getLogger(__name__)


class Images:
    """The pool manager's image pulls; ``stats.image_digests`` holds the digest last seen."""

    def __init__(self, docker: DockerAPI, stats: PoolStats) -> None:
        self._docker = docker
        self._stats = stats
        self._pull_locks: dict[str, trio.Lock] = {}

    async def ensure(self, pool: PoolConfig) -> str:
        """Pull per ``pull_policy`` (one pull per image at a time); return the digest.
        Raises DockerError naming the image when it is missing or its pull fails."""
        lock = self._pull_locks.setdefault(pool.image, trio.Lock())
        async with lock:
            policy = pool.pull_policy.value
            digest = None if policy == "always" else await self._docker.image_digest(pool.image)
            if digest is None and policy == "never":
                raise DockerError(f"image {pool.image} is not present and pull_policy is never")
            if digest is None:
                log.info("pulling image=%s pool=%s", pool.image, pool.name)
                try:
                    digest = await self._docker.pull(
                        pool.image,
                        on_progress=lambda line: log.info("pull %s: %s", pool.image, line),
                    )
                except DockerError as exc:
                    raise DockerError(f"image pull failed for {pool.image}: {exc}") from exc
                log.info("pulled image=%s digest=%s", pool.image, digest)
            self._stats.image_digests[pool.image] = digest
            return digest
