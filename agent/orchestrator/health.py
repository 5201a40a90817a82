"""The readiness checks behind ``GET /readyz``: is each dependency of a promise usable now?

A 2xx to GitHub promises a durable job, so the queue must take a write; runners need Docker;
provisioning needs GitHub credentials. Each check returns None when ready, else what is wrong.
The queue probe writes a delivery id that changes once a minute, so it is a real commit at
least that often (pruned with the others after ``queue.retention``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.container.docker_api import DockerAPI
from agent.github.auth import AppAuth, Secret, TokenAuth
from agent.orchestrator.webhook import ReadinessCheck
from agent.queue.base import JobQueue


def queue_writable(queue: JobQueue, *, clock: Callable[[], float] = time.time) -> ReadinessCheck:
    async def check() -> str | None:
        await queue.record_delivery(f"gantryd-readyz-{int(clock() // 60)}")
        return None

    return check


def docker_answering(docker: DockerAPI) -> ReadinessCheck:
    async def check() -> str | None:
        await docker.ping()
        return None

    return check


def credentials_loaded(
    auth: AppAuth | TokenAuth, secrets: Callable[[], tuple[Secret, ...]]
) -> ReadinessCheck:
    async def check() -> str | None:
        if not secrets():
            return "no webhook secret loaded"
        if isinstance(auth, AppAuth):
            auth.app_jwt()  # proves the App key signs
        elif not auth.token.reveal():
            return "the GitHub token is empty"
        return None

    return check
