"""agent/ops/tables.py: what the control commands print for each message."""

from __future__ import annotations

import time
from dataclasses import replace

from agent.ops.protocol import JobDetail
from agent.ops.tables import format_config, format_fleet, format_job, format_jobs, format_status
from tests.ops.test_protocol import FLEET, JOB, STATUS


def _loaded(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def test_the_config_line_says_when_it_loaded_and_what_waits_for_a_restart() -> None:
    config = replace(STATUS.config, last_reload_ok=True, restart_pending=())
    loaded = _loaded(config.last_reload_at)
    assert format_config(config) == f"config /etc/gantryd/config.toml, loaded {loaded}"
    failed = replace(config, last_reload_ok=False)
    assert format_config(failed).endswith("  [LAST RELOAD FAILED: old config in force]")
    pending = replace(config, restart_pending=("github.api_url",))
    assert format_config(pending).endswith(f"{loaded}; restart needed for: github.api_url")


def test_status_tables() -> None:
    now = STATUS.queue.jobs[0].enqueued_at + 90
    lines = format_status(STATUS, now).splitlines()
    assert lines[0] == "gantryd 0.1.0 on host-1, up -  [DRAINING: taking no new jobs]"
    assert lines[1].endswith("; restart needed for: github.api_url, server.listen")
    assert "[LAST RELOAD FAILED" in lines[1]
    pools = [line.split() for line in lines[lines.index("POOLS") + 2 :][:2]]
    assert pools == [
        ["default", "self-hosted,linux", "idle=1", "busy=2", "4", "queued=3"],
        ["empty", "-", "1", "-"],  # no labels: an empty column
    ]
    runner = lines[lines.index("RUNNERS") + 2].split()
    assert runner == ["gantryd-host-1-abc", "default", "busy", "42", "-", "12s", "0.25", "1.0GiB"]
    queue = lines[lines.index("RUNNERS") + 4]
    assert queue == "QUEUE  queued=3"  # states with no entries are left out
    job = lines[-1].split()
    assert job == ["1", str(JOB.id), "queued", "default", "5", "90s", "octo-org/app", "-"]


def test_job_lists_and_one_job() -> None:
    assert format_jobs(()) == "(no jobs)"
    detail = JobDetail(**vars(JOB), runners=())
    shown = {line[:11].strip(): line[12:] for line in format_job(detail).splitlines()}
    assert shown["id"] == str(JOB.id) and shown["state"] == "queued"
    assert shown["runners"] == "-" and shown["runner"] == "-" and shown["conclusion"] == "-"
    assert shown["last_error"] == "image missing" and shown["workflow"] == ""
    held = format_job(replace(detail, runners=("gantryd-host-1-abc",)))
    assert "runners     ['gantryd-host-1-abc']" in held


def test_fleet_table_marks_this_host_and_gone_hosts() -> None:
    (one,) = FLEET.hosts
    gone = replace(one, host="build-2", gone=True, drained=False, heartbeat_age=47.0, leases=())
    lines = format_fleet(replace(FLEET, hosts=(one, gone))).splitlines()
    assert lines[0] == "FLEET  2 host(s), 1 gone"
    assert lines[1].split() == [
        "host", "state", "runners", "pools", "heartbeat", "leases", "version"
    ]  # fmt: skip
    assert lines[2].split() == [
        "build-1", "(this", "host)", "drained", "3/10", "linux=3/4", "2s", "ago",
        "reconciler", "0.1.0",
    ]  # fmt: skip
    assert lines[3].split()[:6] == ["build-2", "GONE", "3/10", "linux=3/4", "47s", "ago"]
    single = format_fleet(replace(FLEET, backend="sqlite", hosts=()))
    assert single.startswith("build-1: single host (queue backend sqlite)")
