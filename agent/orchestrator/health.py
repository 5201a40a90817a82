"""The readiness checks behind ``GET /readyz``: is each dependency of a promise usable now?

A 2xx to GitHub promises a durable job, so the queue must take a write; runners need Docker;
provisioning needs GitHub credentials; a scale-set pool needs its listener's session. Each check
returns None when ready, else what is wrong.
The queue probe writes a delivery id that changes once a minute, so it is a real commit at
least that often (pruned with the others after ``queue.retention``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from agent.container.docker_api import DockerAPI
from agent.github.auth import AppAuth
from agent.github.credentials import Credentials
from agent.orchestrator.listener import Listener, ListenerState
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
    credentials: Callable[[], Credentials | None], *, webhooks: bool = True
) -> ReadinessCheck:
    """The credentials in force (a reload replaces them) are loaded and usable; a webhook
    secret only when some pool takes webhooks."""

    async def check() -> str | None:
        loaded = credentials()
        if loaded is None:
            return "no credentials loaded"
        if webhooks and not loaded.webhook_secrets:
            return "no webhook secret loaded"
        auth = loaded.auth
        if isinstance(auth, AppAuth):
            auth.app_jwt()  # proves the App key signs
        elif not auth.token.reveal():
            return "the GitHub token is empty"
        return None

    return check


def listeners_listening(listeners: Sequence[Listener]) -> ReadinessCheck:
    """Every scale-set listener has its session open (a waited-out conflict is not ready)."""

    async def check() -> str | None:
        down = [x.status for x in listeners if x.status.state is not ListenerState.LISTENING]
        if not down:
            return None
        return "; ".join(
            f'pool "{s.pool}" listener {s.state.value}' + (f": {s.reason}" if s.reason else "")
            for s in down
        )

    return check
