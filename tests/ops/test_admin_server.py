"""agent/ops/admin_server.py on a real unix socket, driven by the real `gantryd` CLI.

The queue is a real SQLite queue; the pool manager's place is taken by an object with its
``runners()`` query, since no runner is started here (the e2e tests cover that part).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from agent.config import load_config
from agent.container.lifecycle import Runner, RunnerState
from agent.github.client import RunnerTarget
from agent.ops.admin_server import AdminApp, serve_admin
from agent.ops.usage import UsageTracker
from agent.queue.base import JobSpec
from agent.queue.sqlite import SQLiteQueue, open_sqlite_queue
from agent.reload import LiveConfig
from agent.secrets import open_secret_store
from tests.ops.admin_doubles import Paused, Pools
from tests.test_cli import credentials, example_config  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
VALUE = "tok-value-never-printed"


@dataclass
class Admin:
    socket: Path
    scheduler: Paused
    pools: Pools
    config: Path
    queue: SQLiteQueue | None = None
    live: LiveConfig | None = None


def _spec(job_id: int, priority: int = 0) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        run_id=1,
        run_attempt=1,
        repository="octo-org/app",
        installation_id=1,
        labels=("self-hosted",),
        pool="default",
        priority=priority,
    )


@pytest.fixture
async def admin(credentials: Path) -> AsyncIterator[Admin]:  # noqa: F811
    config_path = example_config(credentials)
    live = LiveConfig(load_config(config_path))
    runtime = credentials / "run"
    pools, scheduler = Pools(), Paused()
    async with (
        open_sqlite_queue(credentials / "queue.db") as queue,
        open_secret_store(credentials) as secrets,
        trio.open_nursery() as nursery,
    ):
        await queue.enqueue(_spec(11, priority=5))
        await queue.enqueue(_spec(12))
        (lease,) = await queue.claim(1, lease_seconds=60)
        pools.held.append(
            Runner(
                name="gantryd-test-1",
                pool="default",
                target=RunnerTarget(repository="octo-org/app"),
                installation_id=1,
                labels=("self-hosted",),
                created_at=0.0,
                state=RunnerState.IDLE,
                made_for=lease.job_id,
                lease=lease,
            )
        )
        app = AdminApp(
            live=live,
            queue=queue,
            scheduler=scheduler,
            pools=pools,
            instance="test",
            usage=UsageTracker(),
            secrets=secrets,
        )
        path = await nursery.start(serve_admin, app, runtime)
        yield Admin(path, scheduler, pools, config_path, queue, live)
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed on the way out


async def gantryd(admin: Admin, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent", *args, "--socket", str(admin.socket)]
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            command, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
        )
    )


async def test_status_jobs_drain_and_resume(admin: Admin) -> None:
    assert stat.S_IMODE(admin.socket.stat().st_mode) == 0o660
    table = await gantryd(admin, "status")
    assert table.returncode == 0, table.stderr
    assert "gantryd-test-1" in table.stdout and "default" in table.stdout
    assert "queued=1" in table.stdout and "claimed=1" in table.stdout
    status = json.loads((await gantryd(admin, "status", "--json")).stdout)
    assert status["runners"][0]["job"] == 11 and status["runners"][0]["state"] == "idle"
    assert status["paused"] is False
    admin.pools.notes["default"] = ("HELD: image r:latest is outdated",)
    held = await gantryd(admin, "status")
    assert "pool default HELD: image r:latest is outdated" in held.stdout, held.stderr

    shown = await gantryd(admin, "jobs", "show", "12")
    assert shown.returncode == 0 and "queued" in shown.stdout
    assert "position    1" in shown.stdout
    listed = await gantryd(admin, "jobs", "ls")
    assert "11" in listed.stdout  # the job this host's runner holds
    assert (await gantryd(admin, "jobs", "cancel", "12")).returncode == 0
    again = await gantryd(admin, "jobs", "cancel", "12")
    assert again.returncode == 1 and "already cancelled" in again.stderr
    missing = await gantryd(admin, "jobs", "show", "999")
    assert missing.returncode == 1 and "not in the queue" in missing.stderr
    assert "Traceback" not in missing.stderr

    assert (await gantryd(admin, "drain", "--no-wait")).returncode == 0
    assert admin.scheduler.paused
    assert (await gantryd(admin, "resume")).returncode == 0
    command = [sys.executable, "-m", "agent", "drain", "--socket", str(admin.socket)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # noqa: ASYNC220
    assert child.stdout is not None
    with trio.fail_after(60):
        lines = [await trio.to_thread.run_sync(child.stdout.readline) for _ in range(2)]
        assert lines[1] == "1 runner(s) left: gantryd-test-1 (idle, job 11)\n"
        admin.pools.held.clear()  # the runner finishes: drain sees it and returns
        rest = await trio.to_thread.run_sync(child.stdout.read)
        assert await trio.to_thread.run_sync(child.wait) == 0
    child.stdout.close()
    assert "drained" in rest and admin.scheduler.paused
    assert (await gantryd(admin, "resume")).returncode == 0
    assert not admin.scheduler.paused


async def test_status_names_the_changed_keys_only_a_restart_applies(admin: Admin) -> None:
    assert admin.live is not None
    before = await gantryd(admin, "status")
    assert before.returncode == 0 and "restart needed" not in before.stdout
    # What a reload that changed restart-only keys leaves behind.
    admin.live.restart_pending = ("github.api_url", "server.listen")
    table = await gantryd(admin, "status")
    (line,) = [line for line in table.stdout.splitlines() if line.startswith("config ")]
    assert line.endswith("; restart needed for: github.api_url, server.listen"), line
    shown = json.loads((await gantryd(admin, "status", "--json")).stdout)
    assert shown["config"]["restart_pending"] == ["github.api_url", "server.listen"]


async def test_secrets_through_the_socket(admin: Admin) -> None:
    assert (await gantryd(admin, "secrets", "set", "NPM_TOKEN", stdin=VALUE + "\n")).returncode == 0
    listed = await gantryd(admin, "secrets", "list")
    assert "NPM_TOKEN" in listed.stdout and VALUE not in listed.stdout
    empty = await gantryd(admin, "secrets", "set", "EMPTY", stdin="")
    assert empty.returncode == 1 and "no value on stdin" in empty.stderr
    audit = await gantryd(admin, "secrets", "audit")
    assert "NPM_TOKEN" in audit.stdout and "set" in audit.stdout and VALUE not in audit.stdout
    rotated = await gantryd(admin, "secrets", "rotate-key")
    assert "1 value(s) re-encrypted" in rotated.stdout
    assert (await gantryd(admin, "secrets", "rm", "NPM_TOKEN")).returncode == 0
    gone = await gantryd(admin, "secrets", "rm", "NPM_TOKEN")
    assert gone.returncode == 1 and "not in the store" in gone.stderr
    gc = await gantryd(admin, "gc")
    assert gc.returncode == 1 and "not available" in gc.stderr


async def test_clear_errors_without_a_daemon(tmp_path: Path) -> None:
    fake = Admin(tmp_path / "admin.sock", Paused(), Pools(), tmp_path / "none.toml")
    result = await gantryd(fake, "status")
    assert result.returncode == 1 and "not running" in result.stderr
    assert str(fake.socket) in result.stderr and "Traceback" not in result.stderr


def _rows(table: str, header: str) -> list[list[str]]:
    """The rows of the table that starts with ``header`` in the CLI's output, split on blanks."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.isupper() or line.startswith("("):
            break
        rows.append(line.split())
    return rows


async def test_queue_table_and_retry(admin: Admin) -> None:
    assert admin.queue is not None
    await admin.queue.enqueue(_spec(13, priority=5))
    await admin.queue.enqueue(_spec(14, priority=9))
    status = await gantryd(admin, "status")
    assert status.returncode == 0, status.stderr
    # pos job state pool prio waited repository runner: serving order, places per pool
    queue_rows = [r[:5] for r in _rows(status.stdout, "pos ")]
    assert queue_rows == [
        ["1", "14", "queued", "default", "9"],
        ["-", "11", "claimed", "default", "5"],
        ["2", "13", "queued", "default", "5"],
        ["3", "12", "queued", "default", "0"],
    ]
    shown = json.loads((await gantryd(admin, "status", "--json")).stdout)["queue"]["jobs"]
    assert [(j["id"], j["position"]) for j in shown] == [(14, 1), (11, None), (13, 2), (12, 3)]

    assert (await gantryd(admin, "jobs", "cancel", "12")).returncode == 0
    (lease,) = await admin.queue.claim(1, lease_seconds=60)  # 14
    await admin.queue.fail(lease, "image missing")  # retried later: not claimable now
    listed = await gantryd(admin, "jobs", "ls", "--state", "cancelled")
    assert [r[:3] for r in _rows(listed.stdout, "pos ")] == [["-", "12", "cancelled"]]
    first = await gantryd(admin, "jobs", "ls", "--limit", "2")
    assert [r[1] for r in _rows(first.stdout, "pos ")] == ["14", "11"]
    assert "the first 2 only" in first.stdout
    everything = json.loads((await gantryd(admin, "jobs", "ls", "--json")).stdout)
    assert everything["complete"] and [j["id"] for j in everything["jobs"]] == [14, 11, 13, 12]
    assert everything["jobs"][0]["attempts"] == 1 and everything["jobs"][0]["position"] is None

    retried = await gantryd(admin, "jobs", "retry", "12")
    assert retried.returncode == 0, retried.stderr
    assert "job 12: queued again" in retried.stdout
    job = await admin.queue.get(12)
    assert job is not None and (job.state.value, job.attempts) == ("queued", 0)
    shown = json.loads((await gantryd(admin, "jobs", "show", "12", "--json")).stdout)
    assert (shown["state"], shown["position"]) == ("queued", 2)  # behind 13 (priority 5)
    busy = await gantryd(admin, "jobs", "retry", "11")
    assert busy.returncode == 1 and "only dead or cancelled jobs can be retried" in busy.stderr
    await admin.queue.finish(13, "success")
    done = await gantryd(admin, "jobs", "retry", "13")
    assert done.returncode == 1 and "is done" in done.stderr
    missing = await gantryd(admin, "jobs", "retry", "999")
    assert missing.returncode == 1 and "not in the queue" in missing.stderr
    bad = await gantryd(admin, "jobs", "ls", "--limit", "-1")
    assert bad.returncode == 1 and "limit must be a number" in bad.stderr
    assert "Traceback" not in bad.stderr + missing.stderr + done.stderr
