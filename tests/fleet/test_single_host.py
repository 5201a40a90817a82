"""A single host (the SQLite default) pays nothing for the fleet: no task, no connection, no
redis-py, not even the import of its Redis parts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from pathlib import Path
import trio
from agent.config import Config, GitHubConfig, QueueConfig, SchedulerConfig, ServerConfig
from agent.daemon import open_fleet_if_shared

config = Config(
    path=Path("config.toml"), server=ServerConfig(), github=GitHubConfig(),
    queue=QueueConfig(), scheduler=SchedulerConfig(), pools=(),
)

async def main() -> None:
    async with open_fleet_if_shared(config, None) as fleet:
        assert fleet is None

trio.run(main)
print(*(m in sys.modules for m in ("agent.fleet.membership", "agent.fleet.events", "redis")))
"""


def test_the_sqlite_backend_never_imports_the_fleet_or_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False", "False"], result.stderr
