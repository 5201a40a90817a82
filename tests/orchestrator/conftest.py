"""The intake served for real: WebhookApp on hypercorn (agent.daemon.serve_http), a SQLite queue
on disk, and a signing client that posts deliveries the way GitHub's Hookshot does."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    PriorityRule,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
)
from agent.container.events import JobEvent
from agent.daemon import serve_http
from agent.github.auth import Secret
from agent.orchestrator.admission import Admission
from agent.orchestrator.webhook import ReadinessCheck, WebhookApp
from agent.queue import open_queue
from agent.queue.base import JobQueue
from agent.reload import LiveConfig

SECRET = "It's a Secret to Everybody"
NEXT_SECRET = "the-rotated-secret"
POOLS = (
    PoolConfig(name="default", labels=("self-hosted", "linux", "x64")),
    PoolConfig(name="gpu", labels=("self-hosted", "linux", "x64", "gpu"), priority=5),
)
PRIORITIES = (
    PriorityRule(priority=50, repository="octo-org/release-*"),
    PriorityRule(priority=-10, branch="dependabot/*"),
)
_job_ids = itertools.count(14_541_957_942)


def make_config(tmp_path: Path, **server: Any) -> Config:
    return Config(
        path=tmp_path / "config.toml",
        server=ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path, **server),
        github=GitHubConfig(repositories=("octo-org/app",)),
        queue=QueueConfig(path=tmp_path / "queue.db"),
        scheduler=SchedulerConfig(),
        pools=POOLS,
        priorities=PRIORITIES,
    )


def new_job_id() -> int:
    return next(_job_ids)


def payload(
    job_id: int,
    action: str = "queued",
    *,
    labels: tuple[str, ...] = ("self-hosted", "linux"),
    repository: str = "octo-org/app",
    run_id: int = 4_747_967_848,
    run_attempt: int = 1,
    branch: str = "main",
    runner_name: str | None = None,
    conclusion: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """A ``workflow_job`` payload with the fields of docs/github.md §2.2/§2.3; ``status`` defaults
    to the one GitHub sends with ``action`` for a job with no approval to wait for."""
    return {
        "action": action,
        "workflow_job": {
            "id": job_id,
            "run_id": run_id,
            "run_attempt": run_attempt,
            "workflow_name": "CI",
            "head_branch": branch,
            "head_sha": "16c5286e8d9a0629956a28938386b36608707a71",
            "html_url": f"https://github.com/{repository}/actions/runs/{run_id}/job/{job_id}",
            "status": status or ("completed" if action == "completed" else action),
            "conclusion": conclusion,
            "name": "test",
            "labels": list(labels),
            "runner_id": 7 if runner_name else None,
            "runner_name": runner_name,
            "steps": [],
        },
        "repository": {"full_name": repository, "name": repository.split("/")[1]},
        "organization": {"login": repository.split("/")[0]},
        "installation": {"id": 1001},
        "sender": {"login": "octocat"},
    }


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Intake:
    url: str
    app: WebhookApp
    queue: JobQueue
    live: LiveConfig
    http: httpx.AsyncClient
    events: list[JobEvent] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def wait_events(self, count: int) -> list[JobEvent]:
        """Wait until the pool manager's side has received ``count`` job events."""
        while len(self.events) < count:
            await self.changed.wait()
        return list(self.events)

    async def post(
        self,
        body: Mapping[str, Any] | bytes,
        *,
        event: str = "workflow_job",
        delivery: str | None = None,
        secret: str | None = SECRET,
        form: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST a delivery as Hookshot does: signed raw bytes, a fresh GUID unless given."""
        if isinstance(body, bytes):
            raw = body
        else:
            text = json.dumps(body, separators=(",", ":"))
            raw = urlencode({"payload": text}).encode() if form else text.encode()
        sent = {
            "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
            "User-Agent": "GitHub-Hookshot/044aadd",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        }
        if secret is not None:
            sent["X-Hub-Signature-256"] = sign(raw, secret)
        sent.update(headers or {})
        return await self.http.post(self.url + "/webhook", content=raw, headers=sent)


@pytest.fixture
def intake_config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def readiness() -> dict[str, ReadinessCheck]:
    return {}


@pytest.fixture
async def intake(
    intake_config: Config, readiness: dict[str, ReadinessCheck]
) -> AsyncIterator[Intake]:
    async with serve_intake(intake_config, readiness=readiness) as served:
        yield served


@asynccontextmanager
async def serve_intake(
    config: Config,
    *,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    admission: Admission | None = None,
) -> AsyncIterator[Intake]:
    """The queue, WebhookApp on hypercorn, and a collector of the job events it sends;
    ``admission`` (default: server.max_connections) takes its connections."""
    async with open_queue(config) as queue, trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[JobEvent](100)
        live = LiveConfig(config)
        secrets = (Secret(SECRET), Secret(NEXT_SECRET))
        app = WebhookApp(
            live=live,
            queue=queue,
            secrets=lambda: secrets,
            job_events=send,
            on_enqueue=lambda: None,
            readiness=readiness,
        )
        intake: Intake | None = None

        async def collect() -> None:
            async for event in receive:
                assert intake is not None
                intake.events.append(event)
                intake.changed.set()
                intake.changed = trio.Event()

        binds = await nursery.start(partial(serve_http, admission=admission), app, config.server)
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            intake = Intake(binds[0], app, queue, live, http)
            nursery.start_soon(collect)
            yield intake
        nursery.cancel_scope.cancel()
