"""What the control commands print: the admin protocol's messages as aligned text tables, or
as JSON for scripts (``dumps``, the wire form)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from agent.ops.protocol import (
    Answer,
    AuditRecord,
    ConfigState,
    FleetStatus,
    JobDetail,
    JobInfo,
    SecretSummary,
    Status,
    encode,
)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def format_config(config: ConfigState) -> str:
    """The config line: which file, when it was last loaded, and what a reload could not apply."""
    line = f"config {config.path}, loaded {_when(config.last_reload_at)}"
    if not config.last_reload_ok:
        line += "  [LAST RELOAD FAILED: old config in force]"
    if config.restart_pending:
        line += f"; restart needed for: {', '.join(config.restart_pending)}"
    return line


def format_status(status: Status, now: float | None = None) -> str:
    now = time.time() if now is None else now
    head = [
        f"gantryd {status.version} on {status.instance}, up {_age(status.uptime)}"
        + ("  [DRAINING: taking no new jobs]" if status.paused else ""),
        format_config(status.config),
        "",
        "POOLS",
        _table(
            ["pool", "labels", "runners", "max", "queue"],
            [
                [
                    p.name,
                    ",".join(p.labels),
                    _counts({str(k): v for k, v in p.runners.items()}),
                    str(p.max_runners),
                    _counts({str(k): v for k, v in p.queue.items()}),
                ]
                for p in status.pools
            ],
        ),
        *(f"pool {p.name} {note}" for p in status.pools for note in p.notes),
        *[f"  {p.name}: listener {p.listener}" for p in status.pools if p.listener],
        "",
        "RUNNERS",
    ]
    runners = status.runners
    head.append(
        _table(
            ["runner", "pool", "state", "job", "repository", "age", "cpu", "memory"],
            [
                [
                    r.name,
                    r.pool,
                    str(r.state),
                    str(r.job or "-"),
                    r.repository or "-",
                    _age(r.age),
                    "-" if r.cpu is None else f"{r.cpu:.2f}",
                    _bytes(r.memory),
                ]
                for r in runners
            ],
        )
        if runners
        else "(none)"
    )
    queue = status.queue
    head += ["", "QUEUE  " + " ".join(f"{k}={v}" for k, v in queue.by_state.items() if v)]
    head.append(format_jobs(queue.jobs, now) if queue.jobs else "(nothing waiting)")
    return "\n".join(head)


def format_fleet(fleet: FleetStatus) -> str:
    """``gantryd status --fleet``: one row per host, gone hosts marked, then its pools."""
    if fleet.backend != "redis":
        return (
            f"{fleet.instance}: single host (queue backend {fleet.backend}); nothing is shared "
            "with other hosts. `gantryd status` shows this host."
        )
    rows = []
    for h in fleet.hosts:
        state = "GONE" if h.gone else "drained" if h.drained else "up"
        me = " (this host)" if h.host == fleet.instance else ""
        rows.append(
            [
                h.host + me,
                state,
                f"{h.runners}/{h.max_runners}",
                " ".join(f"{p.name}={p.runners}/{p.max_runners}" for p in h.pools) or "-",
                _age(h.heartbeat_age) + " ago",
                ",".join(h.leases) or "-",
                h.version,
            ]
        )
    gone = sum(1 for h in fleet.hosts if h.gone)
    return "\n".join(
        [
            f"FLEET  {len(fleet.hosts)} host(s), {gone} gone",
            _table(["host", "state", "runners", "pools", "heartbeat", "leases", "version"], rows),
        ]
    )


def format_jobs(jobs: Sequence[JobInfo], now: float | None = None) -> str:
    if not jobs:
        return "(no jobs)"
    now = time.time() if now is None else now
    return _table(
        ["pos", "job", "state", "pool", "prio", "waited", "repository", "runner"],
        [
            [
                str(j.position or "-"),
                str(j.id),
                str(j.state),
                j.pool,
                str(j.priority),
                _age(now - j.enqueued_at),
                j.repository,
                j.runner or "-",
            ]
            for j in jobs
        ],
    )


def format_job(job: JobDetail) -> str:
    rows: list[tuple[str, object]] = [
        ("id", job.id),
        ("state", job.state),
        ("repository", job.repository),
        ("pool", job.pool),
        ("priority", job.priority),
        ("position", job.position),
        ("attempts", job.attempts),
        ("runner", job.runner),
        ("runners", list(job.runners)),
        ("conclusion", job.conclusion),
        ("last_error", job.last_error),
        ("workflow", job.workflow),
        ("name", job.name),
    ]
    return "\n".join(f"{k:<11} {v if v not in (None, []) else '-'}" for k, v in rows)


def format_secrets(entries: Sequence[SecretSummary]) -> str:
    if not entries:
        return "(no secrets)"
    return _table(
        ["name", "created", "updated"],
        [[e.name, _when(e.created_at), _when(e.updated_at)] for e in entries],
    )


def format_audit(entries: Sequence[AuditRecord]) -> str:
    if not entries:
        return "(no audit entries)"
    return _table(
        ["when", "secret", "action", "runner", "job", "by"],
        [
            [
                _when(e.at),
                e.secret,
                str(e.action),
                e.runner or "-",
                str(e.job or "-"),
                e.actor,
            ]
            for e in entries
        ],
    )


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def dumps(message: Answer) -> str:
    """``--json`` output: the message as the socket carries it."""
    return json.dumps(encode(message), indent=2, sort_keys=True)
