"""A reporter in its own process, for the kill -9 test: drains a queue file into the emulator.

    python tests/orchestrator/reporter_child.py QUEUE_DB STATE_DIR API_URL KEY_PEM

Runs `StatusReporter` (GitHub App auth, installation from the entries) until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
)
from agent.github.auth import AppAuth, load_private_key
from agent.github.client import GitHubClient
from agent.github.ratelimit import ContentPacer
from agent.orchestrator.status_reporter import StatusReporter
from agent.queue.sqlite import open_sqlite_queue
from agent.reload import LiveConfig

APP_ID = "4242"


def config(state_dir: Path, api_url: str, key: Path) -> Config:
    return Config(
        path=state_dir / "config.toml",
        server=ServerConfig(state_dir=state_dir, instance="child"),
        github=GitHubConfig(api_url=api_url, app_id=APP_ID, private_key_file=key),
        queue=QueueConfig(),
        scheduler=SchedulerConfig(),
        pools=(PoolConfig(name="default", labels=("self-hosted", "linux")),),
    )


async def main(queue_db: Path, state_dir: Path, api_url: str, key: Path) -> None:
    live = LiveConfig(config(state_dir, api_url, key))
    auth = AppAuth(app_id=APP_ID, key=load_private_key(key))
    async with (
        open_sqlite_queue(queue_db) as queue,
        GitHubClient(api_url, auth) as github,
    ):
        reporter = StatusReporter(
            queue=queue,
            github=github,
            live=live,
            instance="child",
            pacer=ContentPacer(per_minute=10_000, per_hour=10_000),
        )
        await reporter.run()


if __name__ == "__main__":
    queue_db, state_dir, api_url, key = sys.argv[1:5]
    trio.run(main, Path(queue_db), Path(state_dir), api_url, Path(key))
