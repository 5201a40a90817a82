"""What to do with a runner now: a pure decision the maintenance pass then carries out.

Decide, then act: ``decide`` reads a runner's facts, its pool's timeouts and the time, and
returns a ``Decision``; the pool manager does the effects (GitHub, Docker, the queue). So the
timeout rules are tested without Docker (tests/container/test_policy.py).

- A runner whose container exited while it still waited for a job is given ``exit_settle``
  seconds (its job's webhooks may be on their way), then counted as a failure of its job.
- A runner made for a job that took none within ``bootstrap_timeout`` is scaled down and the
  job's attempt counted (GitHub first: it refuses when a job was just assigned).
- A warm runner idle for ``max_idle_age`` is scaled down (GitHub drops idle JIT runners after
  a few minutes; the warm pool refills with a fresh one).
- A busy runner past ``job_timeout`` is stopped once, with ``stop_grace``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.config import PoolConfig
from agent.container.lifecycle import Outcome, Runner, RunnerState

# Seconds past every timeout of a pool before gantryd calls what is left of a runner expired:
# the containers' expiry label, and how long a job's start record waits for its ``completed``.
EXPIRY_SLACK = 600.0


class Verdict(enum.Enum):
    NOTHING = "nothing"  # leave it as it is
    FAIL = "fail"  # count a failure against its job and retire it
    SCALE_DOWN = "scale_down"  # deregister, then remove (a failure of its job when ``failure``)
    STOP = "stop"  # stop its container for job_timeout; its exit retires it


@dataclass(frozen=True, kw_only=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # for the log and, on failure, the job's report
    outcome: Outcome | None = None  # what to count
    failure: bool = False  # SCALE_DOWN: also count it against the job


KEEP = Decision(verdict=Verdict.NOTHING)


def decide(runner: Runner, pool: PoolConfig | None, *, now: float, exit_settle: float) -> Decision:
    """What the maintenance pass does with ``runner`` at ``now``; ``pool`` is None when its
    pool left the configuration (its runner is then only failed, never timed out)."""
    exited = runner.exited_at
    if runner.waiting and exited is not None and now - exited >= exit_settle:
        return Decision(
            verdict=Verdict.FAIL,
            reason=f"runner exited (code {runner.exit_code}) before taking a job",
            outcome=Outcome.EXIT_BEFORE_JOB,
        )
    if pool is None or exited is not None:
        return KEEP
    if runner.state is RunnerState.IDLE and runner.made_for is not None:
        waited = now - max(runner.assigned_at or 0.0, runner.state_since)
        if waited > pool.bootstrap_timeout:
            return Decision(
                verdict=Verdict.SCALE_DOWN,
                reason=f"runner took no job within bootstrap_timeout ({pool.bootstrap_timeout:g}s)",
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
