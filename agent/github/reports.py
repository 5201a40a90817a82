"""What gantryd tells GitHub about a job it serves: check-run bodies and commit statuses.

Pure functions from an outbox entry (the job's latest state) and what the reporter looked up
(queue position, timings, the pool's limits) to GitHub's request bodies, within GitHub's limits
(docs/github.md §6.1: output summary and text ≤ 65535 characters; §6.2: status ``state`` values).
The texts are written for the person waiting on the job: where it is, what it used, and — when
gantryd itself failed — the reason in plain words.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.config import PoolConfig
from agent.queue.base import JobState, OutboxEntry

MAX_OUTPUT = 65535  # §6.1
MAX_DESCRIPTION = 140  # commit status description; longer ones are refused [U: observed limit]
MAX_CONTEXT = 255  # commit status context; longer ones are refused [U: observed limit, §6.2]
CHECK_CONCLUSIONS = frozenset(
    {"action_required", "cancelled", "failure", "neutral", "success", "skipped", "timed_out"}
)


class Reporting(enum.StrEnum):
    ALL = "all"
    FAILURES = "failures"  # only jobs gantryd gave up on (DEAD)
    OFF = "off"


def wanted(mode: str, state: JobState) -> bool:
    """Whether ``reporting = mode`` reports a job in ``state``."""
    if mode == Reporting.OFF:
        return False
    return mode == Reporting.ALL or state is JobState.DEAD


@dataclass(frozen=True, kw_only=True)
class Context:
    """What the reporter knows beyond the entry itself."""

    instance: str  # this host's name
    pool: PoolConfig | None  # None if the pool was removed from the config since
    position: int | None  # place among the pool's queued jobs, when queued
    enqueued_at: float | None
    started_at: float | None  # first seen running
    finished_at: float | None
    now: float
    runner_name: str | None = None  # the runner (container) the job ran on, if it ran
    peak_memory: int | None = None  # bytes, from the pool's stats of the runner container
    cpu_seconds: float | None = None
    oom_killed: bool = False
    hold: str | None = None  # why the job's pool takes no job now (an outdated image), if so


def check_run_name(entry: OutboxEntry) -> str:
    """One name per job and attempt that a person can tell apart on the commit: jobs of one
    name in two workflows, and each re-run of a job (``run_attempt``), get their own."""
    spec = entry.spec
    job = spec.name or str(spec.job_id)
    where = f"{spec.workflow_name} / {job}" if spec.workflow_name else job
    return f"gantryd: {where} (attempt {spec.run_attempt})"


def status_context(entry: OutboxEntry) -> str:
    """A commit status context of the job's own: GitHub keeps one status per (sha, context),
    so jobs sharing one would overwrite each other's (§6.2). The job id sets apart what the
    name cannot (a push and a pull_request run of one commit, each re-run); the name is cut so
    the whole stays within GitHub's `MAX_CONTEXT`."""
    spec = entry.spec
    job = spec.name or str(spec.job_id)
    where = f"{spec.workflow_name} / {job}" if spec.workflow_name else job
    prefix, suffix = "gantryd: ", f" (attempt {spec.run_attempt}, job {spec.job_id})"
    return prefix + where[: MAX_CONTEXT - len(prefix) - len(suffix)] + suffix


def iso8601(epoch: float) -> str:
    """GitHub's timestamp form ``YYYY-MM-DDTHH:MM:SSZ`` (§6.1)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _limits(pool: PoolConfig | None) -> str:
    if pool is None:
        return "unknown (the pool is no longer configured)"
    return (
        f"{_size(pool.memory)} memory, {pool.cpus:g} CPU, {pool.pids_limit} processes, "
        f'security profile "{pool.security.value}"'
        + (
            f"; Docker sidecar (privileged) {_size(pool.docker_memory)} memory, "
            f"{pool.docker_cpus:g} CPU"
            if pool.job_memory != pool.memory
            else ""
        )
    )


def _usage(ctx: Context) -> list[str]:
    lines = []
    if ctx.enqueued_at is not None and ctx.started_at is not None:
        lines.append(f"- queue wait: {_duration(ctx.started_at - ctx.enqueued_at)}")
    if ctx.started_at is not None and ctx.finished_at is not None:
        lines.append(f"- duration: {_duration(ctx.finished_at - ctx.started_at)}")
    if ctx.peak_memory:
        limit = f" of {_size(ctx.pool.job_memory)}" if ctx.pool is not None else ""
        lines.append(f"- peak memory: {_size(ctx.peak_memory)}{limit}")
    if ctx.cpu_seconds:  # 0: never sampled (the job ended before the first stats sample)
        lines.append(f"- CPU time: {ctx.cpu_seconds:.1f}s")
    if ctx.oom_killed:
        lines.append("- the container ran out of memory and was killed: raise the pool's memory")
    return lines


@dataclass(frozen=True, kw_only=True)
class Report:
    status: str  # queued | in_progress | completed
    conclusion: str | None
    title: str
    summary: str

    def check_run_body(self, entry: OutboxEntry, ctx: Context) -> dict[str, Any]:
        """A create or update body; name/head_sha/external_id make it creatable too."""
        body: dict[str, Any] = {
            "name": check_run_name(entry),
            "head_sha": entry.spec.head_sha,
            "external_id": str(entry.spec.job_id),
            "status": self.status,
            "output": {"title": self.title[:255], "summary": self.summary[:MAX_OUTPUT]},
        }
        if entry.spec.html_url:
            body["details_url"] = entry.spec.html_url
        if self.status != "queued" and ctx.started_at is not None:
            body["started_at"] = iso8601(ctx.started_at)
        if self.status == "completed":
            body["conclusion"] = self.conclusion
            body["completed_at"] = iso8601(ctx.finished_at or ctx.now)
        return body

    def status_body(self, entry: OutboxEntry) -> dict[str, Any]:
        """A commit status (§6.2): pending while queued or running, then the outcome."""
        if self.status != "completed":
            state = "pending"
        elif self.conclusion in ("success", "neutral", "skipped"):
            state = "success"
        elif self.conclusion == "failure" and entry.state is JobState.DEAD:
            state = "error"  # gantryd's own failure, not the job's
        elif self.conclusion == "cancelled":
            state = "error"
        else:
            state = "failure"
        body: dict[str, Any] = {
            "state": state,
            "context": status_context(entry),
            "description": _one_line(self.title)[:MAX_DESCRIPTION],
        }
        if entry.spec.html_url:
            body["target_url"] = entry.spec.html_url
        return body


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_report(entry: OutboxEntry, ctx: Context) -> Report:
    """The report for the job's latest state."""
    spec, detail = entry.spec, entry.detail
    pool = spec.pool
    if entry.state is JobState.HELD:
        summary = (
            f"Waiting for approval: the job's environment has required reviewers on GitHub. "
            f"gantryd starts a runner in pool `{pool}` on host `{ctx.instance}` once it is "
            "approved; a rejected job is dropped."
        )
        return Report(
            status="queued", conclusion=None, title="Waiting for approval", summary=summary
        )
    if entry.state is JobState.QUEUED and ctx.hold:
        summary = (
            f"Held in pool `{pool}` on host `{ctx.instance}`: {ctx.hold}. The job stays "
            "queued, no attempt is counted, and it starts once the pool serves again."
        )
        return Report(
            status="queued",
            conclusion=None,
            title=f"Held: {_one_line(ctx.hold)}"[:255],
            summary=summary,
        )
    if entry.state is JobState.QUEUED:
        where = f"position {ctx.position}" if ctx.position else "a runner is being started"
        lines = [f"Queued in pool `{pool}` on host `{ctx.instance}`: {where}."]
        if detail.get("reason"):
            retry = detail.get("retry_at")
            when = f" at {iso8601(retry)}" if isinstance(retry, int | float) else ""
            lines.append(
                f"\nAttempt {detail.get('attempts', '?')} failed: {detail['reason']}. "
                f"gantryd retries{when}."
            )
        title = f"Queued in {pool}" + (f", position {ctx.position}" if ctx.position else "")
        return Report(status="queued", conclusion=None, title=title, summary="\n".join(lines))
    if entry.state in (JobState.CLAIMED, JobState.RUNNING):
        container = detail.get("runner_name") or "starting"
        summary = "\n".join(
            [
                f"Running on host `{ctx.instance}` in container `{container}` (pool `{pool}`).",
                f"\nLimits: {_limits(ctx.pool)}.",
            ]
        )
        return Report(
            status="in_progress",
            conclusion=None,
            title=f"Running on {ctx.instance}",
            summary=summary,
        )
    if entry.state is JobState.DEAD:
        reason = str(detail.get("reason") or "no reason recorded")
        summary = (
            f"gantryd could not run this job on host `{ctx.instance}` (pool `{pool}`) and "
            f"gave up after its retries.\n\nReason: {reason}"
        )
        return Report(
            status="completed",
            conclusion="failure",
            title=f"gantryd could not run this job: {_one_line(reason)}"[:255],
            summary=summary,
        )
    if entry.state is JobState.CANCELLED:
        reason = str(detail.get("reason") or "cancelled")
        return Report(
            status="completed",
            conclusion="cancelled",
            title="Cancelled",
            summary=f"The job was cancelled before it ran: {reason}",
        )
    conclusion = str(detail.get("conclusion") or "neutral")
    usage = _usage(ctx)
    summary = f"Ran on host `{ctx.instance}` in pool `{pool}`; GitHub's result: {conclusion}."
    if conclusion == "timed_out":
        limit = f" ({ctx.pool.job_timeout:g}s)" if ctx.pool is not None else ""
        summary = (
            f"Ran on host `{ctx.instance}` in pool `{pool}` and was stopped by gantryd: it "
            f"exceeded the pool's job_timeout{limit}."
        )
    if usage:
        summary += "\n\n" + "\n".join(usage)
    return Report(
        status="completed",
        conclusion=conclusion if conclusion in CHECK_CONCLUSIONS else "neutral",
        title="Timed out" if conclusion == "timed_out" else f"Finished: {conclusion}",
        summary=summary,
    )
