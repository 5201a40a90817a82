"""redis-py stays an optional dependency: a single host on SQLite never imports it."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_and_the_commands_import_without_redis() -> None:
    probe = (
        "import sys, agent.cli, agent.daemon, agent.ops.commands, agent.ops.services, "
        "agent.secrets, agent.fleet.hosts, agent.fleet.leases, agent.fleet.ratelimits; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
