"""agent/container/policy.py: what the maintenance pass does with a runner, no Docker."""

from __future__ import annotations

from dataclasses import replace

from agent.config import PoolConfig, Scope
from agent.container.lifecycle import Outcome, Runner, RunnerState
from agent.container.policy import (
    DEPRECATED_EXIT_ENV,
    EXIT_SIGTERM,
    EXIT_VERSION_DEPRECATED,
    EXPIRY_SLACK,
    KEEP,
    Verdict,
    container_expiry,
    decide,
    exit_meaning,
    start_record_expired,
)
from agent.github.client import RunnerTarget

POOL = PoolConfig(
    name="p",
    labels=("self-hosted",),
    bootstrap_timeout=60.0,
    max_idle_age=300.0,
    job_timeout=3600.0,
    stop_grace=10.0,
)
SETTLE = 5.0


def runner(state: RunnerState, *, since: float = 0.0, made_for: int | None = 7) -> Runner:
    made = Runner(
        name="gantryd-h-1",
        pool="p",
        target=RunnerTarget(repository="o/a"),
        installation_id=None,
        labels=POOL.labels,
        created_at=0.0,
        container_id="c1",
    )
    made.assign(made_for, None, repository="o/a", now=since)
    made.state, made.state_since = state, since
    return made


def test_a_waiting_runner_that_exited_is_ended_once_exit_settle_passed() -> None:
    gone = runner(RunnerState.IDLE)
    gone.exit_code = 3
    assert gone.mark_exited(100.0) and not gone.mark_exited(101.0)  # the first exit counts
    assert decide(gone, POOL, now=100.0 + SETTLE - 1, exit_settle=SETTLE) == KEEP
    failed = decide(gone, POOL, now=100.0 + SETTLE, exit_settle=SETTLE)
    # GitHub is asked next: a registration it removed is a normal end, else a failure.
    assert failed.verdict is Verdict.ENDED and failed.outcome is Outcome.EXIT_BEFORE_JOB
    assert "code 3" in failed.reason
    assert decide(gone, None, now=200.0, exit_settle=SETTLE).verdict is Verdict.ENDED


def test_exit_7_marks_the_image_outdated_at_once_and_other_codes_are_named() -> None:
    deprecated = runner(RunnerState.IDLE)
    deprecated.exit_code = EXIT_VERSION_DEPRECATED
    deprecated.mark_exited(100.0)
    decision = decide(deprecated, POOL, now=100.0, exit_settle=SETTLE)  # no settle: no job ran
    assert decision.verdict is Verdict.OUTDATED and decision.outcome is Outcome.IMAGE_OUTDATED
    assert POOL.image in decision.reason and not decision.failure
    busy = runner(RunnerState.BUSY)
    busy.exit_code = EXIT_VERSION_DEPRECATED
    busy.mark_exited(100.0)
    assert decide(busy, POOL, now=100.0, exit_settle=SETTLE) == KEEP  # its exit retires it
    assert "SIGTERM" in exit_meaning(EXIT_SIGTERM) and "normally" in exit_meaning(0)
    assert exit_meaning(None) == "container gone" and exit_meaning(5) == "code 5: error"


def test_gantryd_asks_every_runner_for_exit_7() -> None:
    assert DEPRECATED_EXIT_ENV == {"ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE": "1"}


def test_default_max_idle_age_is_below_githubs_idle_expiry() -> None:
    # GitHub drops a JIT runner that took no job after 2-6 minutes (docs/github.md §3.2).
    assert PoolConfig(name="d", labels=("x",)).max_idle_age < 300.0


def test_an_exited_busy_runner_or_one_of_a_removed_pool_is_left_alone() -> None:
    busy = runner(RunnerState.BUSY)
    busy.mark_exited(10.0)  # its exit retires it; no timeout applies any more
    assert decide(busy, POOL, now=1e6, exit_settle=SETTLE) == KEEP
    assert decide(runner(RunnerState.BUSY), None, now=1e6, exit_settle=SETTLE) == KEEP


def test_bootstrap_timeout_runs_from_the_later_of_assignment_and_idle() -> None:
    idle = runner(RunnerState.IDLE, since=100.0)
    idle.assign(8, None, repository="o/a", now=130.0)  # a job it was made for moved to it
    assert decide(idle, POOL, now=190.0, exit_settle=SETTLE) == KEEP
    timed_out = decide(idle, POOL, now=190.5, exit_settle=SETTLE)
    assert (timed_out.verdict, timed_out.failure) == (Verdict.SCALE_DOWN, True)
    assert timed_out.outcome is Outcome.BOOTSTRAP_TIMEOUT and "60s" in timed_out.reason
    starting = runner(RunnerState.STARTING)
    assert decide(starting, POOL, now=1e6, exit_settle=SETTLE) == KEEP  # it has not connected


def test_an_organization_pools_bootstrap_timeout_names_its_runner_group() -> None:
    """A job naming another runs-on group fits the labels but never reaches the pool's runners
    (GitHub does not send the group while queued): the reason says what to look at."""
    org = replace(POOL, scope=Scope.ORGANIZATION, runner_group="ci")
    idle = runner(RunnerState.IDLE, since=100.0)
    timed_out = decide(idle, org, now=1e6, exit_settle=SETTLE)
    assert timed_out.outcome is Outcome.BOOTSTRAP_TIMEOUT
    assert 'runs-on names a runner group, it must be "ci"' in timed_out.reason
    plain = decide(idle, POOL, now=1e6, exit_settle=SETTLE)
    assert "runner group" not in plain.reason  # repository runners are in no group to name


def test_a_warm_runner_is_recycled_after_max_idle_age_and_counts_against_no_job() -> None:
    warm = runner(RunnerState.IDLE, since=50.0, made_for=None)
    assert warm.warm and warm.assigned_at is None
    assert decide(warm, POOL, now=350.0, exit_settle=SETTLE) == KEEP
    recycled = decide(warm, POOL, now=350.5, exit_settle=SETTLE)
    assert (recycled.verdict, recycled.failure) == (Verdict.SCALE_DOWN, False)
    assert recycled.outcome is Outcome.IDLE_RECYCLED


def test_job_timeout_stops_a_busy_runner_once() -> None:
    busy = runner(RunnerState.BUSY, since=1000.0)
    assert decide(busy, POOL, now=4600.0, exit_settle=SETTLE) == KEEP
    stop = decide(busy, POOL, now=4600.5, exit_settle=SETTLE)
    assert stop.verdict is Verdict.STOP and stop.outcome is Outcome.JOB_TIMEOUT
    assert stop.reason.endswith("timed_out")
    busy.timed_out = True
    busy.reason = "out of memory (the pool's memory limit was reached)"  # reason is for reports
    assert decide(busy, POOL, now=9999.0, exit_settle=SETTLE) == KEEP
    busy.timed_out, busy.container_id = False, None  # no container yet: nothing to stop
    assert decide(busy, POOL, now=9999.0, exit_settle=SETTLE) == KEEP


def test_start_records_and_containers_expire_past_every_timeout() -> None:
    limit = EXPIRY_SLACK + POOL.job_timeout + POOL.stop_grace
    assert not start_record_expired(POOL, since=0.0, now=limit)
    assert start_record_expired(POOL, since=0.0, now=limit + 1)
    assert start_record_expired(None, since=0.0, now=EXPIRY_SLACK + 1)
    everything = POOL.bootstrap_timeout + POOL.max_idle_age + limit
    assert container_expiry(POOL, 1000.0) == 1000.0 + everything
