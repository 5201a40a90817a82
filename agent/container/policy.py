"""What to do with a runner now: a pure decision the maintenance pass then carries out.

Decide, then act: ``decide`` reads a runner's facts, its pool's timeouts and the time, and
returns a ``Decision``; the pool manager does the effects (GitHub, Docker, the queue). So the
timeout rules are tested without Docker (tests/container/test_policy.py).

- A runner whose container exited 7 while it waited for a job was refused by GitHub as a
  deprecated version (run.sh passes 7 out because gantryd sets
  ``ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1``): its pool's image is outdated, which
  is no failure of the job; the job goes back to the queue untouched.
- A runner whose container exited otherwise while it still waited for a job is given
  ``exit_settle`` seconds (its job's webhooks may be on their way); then GitHub is asked
  (``ENDED``): a registration GitHub already removed (idle JIT runners are dropped after ~5
  minutes, docs/github.md §3.5; the Listener then exits 0 on RunnerNotFound) is a normal end,
  anything else counts as a failure of its job.
- A runner made for a job that took none within ``bootstrap_timeout`` is scaled down and the
  job's attempt counted (GitHub first: it refuses when a job was just assigned).
- A warm runner idle for ``max_idle_age`` is scaled down (GitHub drops idle JIT runners after
  a few minutes; the warm pool refills with a fresh one).
- A busy runner past ``job_timeout`` is stopped once, with ``stop_grace``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.config import PoolConfig, Scope
from agent.container.lifecycle import Outcome, Runner, RunnerState

# Seconds past every timeout of a pool before gantryd calls what is left of a runner expired:
# the containers' expiry label, and how long a job's start record waits for its ``completed``.
EXPIRY_SLACK = 600.0


class Verdict(enum.Enum):
    NOTHING = "nothing"  # leave it as it is
    FAIL = "fail"  # count a failure against its job and retire it
    ENDED = "ended"  # exited while waiting: a normal end if GitHub removed it, else FAIL
    OUTDATED = "outdated"  # GitHub refused its version: mark the pool's image, job back untouched
    SCALE_DOWN = "scale_down"  # deregister, then remove (a failure of its job when ``failure``)
    STOP = "stop"  # stop its container for job_timeout; its exit retires it


@dataclass(frozen=True, kw_only=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # for the log and, on failure, the job's report
    outcome: Outcome | None = None  # what to count
    failure: bool = False  # SCALE_DOWN: also count it against the job


KEEP = Decision(verdict=Verdict.NOTHING)

# Exit codes of the official image's run.sh (src/Misc/layoutroot/run.sh, Constants.cs ReturnCode)
EXIT_OK = 0  # the Listener stopped without error, or GitHub removed the runner (RunnerNotFound)
EXIT_VERSION_DEPRECATED = 7  # only with ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1
EXIT_SIGTERM = 143  # 128 + SIGTERM: stopped (by gantryd's job_timeout stop, or `docker stop`)
EXIT_NOT_FOUND = 127  # a command run.sh runs is missing or cannot be written (read-only rootfs)
# gantryd sets this in every runner container so a deprecated runner says so (exit 7) instead
# of exiting 0 like a runner that simply stopped.
DEPRECATED_EXIT_ENV = {"ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE": "1"}


def exit_meaning(code: int | None) -> str:
    """What a runner container's exit code says, for logs and job reports."""
    meanings = {
        EXIT_OK: "stopped normally",
        EXIT_VERSION_DEPRECATED: "runner version deprecated by GitHub",
        EXIT_SIGTERM: "stopped by SIGTERM",
        EXIT_NOT_FOUND: "a command was missing or not writable",
    }
    if code is None:
        return "container gone"
    return f"code {code}: {meanings.get(code, 'error')}"


def decide(runner: Runner, pool: PoolConfig | None, *, now: float, exit_settle: float) -> Decision:
    """What the maintenance pass does with ``runner`` at ``now``; ``pool`` is None when its
    pool left the configuration (its runner is then only failed, never timed out)."""
    exited = runner.exited_at
    if runner.waiting and exited is not None and runner.exit_code == EXIT_VERSION_DEPRECATED:
        return Decision(
            verdict=Verdict.OUTDATED,
            reason=f"runner version deprecated by GitHub (exit 7): image {runner_image(pool)}"
            " is outdated; pull or build a newer one",
            outcome=Outcome.IMAGE_OUTDATED,
        )
    if runner.waiting and exited is not None and now - exited >= exit_settle:
        return Decision(
            verdict=Verdict.ENDED,
            reason=f"runner exited ({exit_meaning(runner.exit_code)}) before taking a job",
            outcome=Outcome.EXIT_BEFORE_JOB,
        )
    if pool is None or exited is not None:
        return KEEP
    if runner.state is RunnerState.IDLE and runner.made_for is not None:
        waited = now - max(runner.assigned_at or 0.0, runner.state_since)
        if waited > pool.bootstrap_timeout:
            reason = f"runner took no job within bootstrap_timeout ({pool.bootstrap_timeout:g}s)"
            if pool.scope is Scope.ORGANIZATION:
                # GitHub sends no runs-on group while a job is queued (job_parser): a job that
                # names another group fits the pool's labels yet never reaches its runners.
                group = pool.runner_group
                reason += (
                    f'; if the job\'s runs-on names a runner group, it must be "{group}" (the '
                    "pool's runner_group: GitHub gives the job to no other group's runner)"
                )
            return Decision(
                verdict=Verdict.SCALE_DOWN,
                reason=reason,
                outcome=Outcome.BOOTSTRAP_TIMEOUT,
                failure=True,
            )
    elif runner.warm and runner.state is RunnerState.IDLE:
        if now - runner.state_since > pool.max_idle_age:
            return Decision(
                verdict=Verdict.SCALE_DOWN,
                reason=f"warm runner reached max_idle_age ({pool.max_idle_age:g}s)",
                outcome=Outcome.IDLE_RECYCLED,
            )
    elif (
        runner.state is RunnerState.BUSY
        and now - runner.state_since > pool.job_timeout
        and runner.container_id is not None
        and not runner.timed_out
    ):
        return Decision(
            verdict=Verdict.STOP,
            reason=f"job exceeded job_timeout ({pool.job_timeout:g}s): timed_out",
            outcome=Outcome.JOB_TIMEOUT,
        )
    return KEEP


def runner_image(pool: PoolConfig | None) -> str:
    return "of a removed pool" if pool is None else pool.image


def start_record_expired(pool: PoolConfig | None, *, since: float, now: float) -> bool:
    """Whether the start record of a job that went in_progress at ``since`` may be dropped:
    its ``completed`` never came (a lost delivery; the reconciler settles the job) and it is
    past any timeout of its pool."""
    limit = EXPIRY_SLACK + (0.0 if pool is None else pool.job_timeout + pool.stop_grace)
    return now - since > limit


def container_expiry(pool: PoolConfig, created_at: float) -> float:
    """When garbage collection may call a runner's container expired: past every timeout its
    runner could live through, whatever happens to gantryd meanwhile."""
    return (
        created_at
        + pool.bootstrap_timeout
        + pool.max_idle_age
        + pool.job_timeout
        + pool.stop_grace
        + EXPIRY_SLACK
    )
