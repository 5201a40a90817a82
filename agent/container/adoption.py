"""Taking over what a previous run of gantryd left (containers outlive it: docs/design.md §2).

Every runner has a row in the state database before GitHub hears of it. At start each row is
matched with this instance's containers: a container that was started keeps its runner and its
job; a row without one, or whose container was never started, is an orphan, so its
registration is deleted at GitHub, its container removed and its lease released.

"Started" is Docker's word, not the row's: the row says ``creating`` until the start has
returned, so a gantryd killed or cancelled in between leaves a started container under a
``creating`` row. Its runner has its JIT config (written to stdin right after the start) and
may already have taken a job, which GitHub would lose with the container (a busy runner cannot
even be deregistered: 422). So it is adopted as what the interrupted provisioning would have
recorded next, ``idle`` (bootstrap_timeout and exit_settle then apply as to any runner), unless
its container has exited already and GitHub still held its registration idle: it then ran no
job (a kill right after the start cut its config short) and is removed with no attempt counted
against its job. A container Docker still calls ``created`` provably never got its config (its
stdin closed with the process that would have written it) and is removed too.

A runner whose container stopped meanwhile is marked exited at the time Docker says it
finished (not at adoption: a restart must not restart the ``exit_settle`` wait of runners long
dead, which hold capacity until it ends) and, unless it still waited for a job, retired at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.container import dind
from agent.container.assignment import Assignments
from agent.container.docker_api import (
    RUNNER_LABEL,
    ContainerInfo,
    ContainerNotFound,
    DockerAPI,
    DockerError,
)
from agent.container.lifecycle import Outcome, PoolStats, Runner, RunnerState
from agent.container.registry import Registry
from agent.container.removal import Removal
from agent.container.store import RunnerStore, StoredRunner
from agent.github.client import DeleteOutcome, GitHubClient, GitHubError
from agent.queue.base import JobQueue, JobState, Lease

log = logging.getLogger(__name__)


async def adopt(
    *,
    store: RunnerStore,
    docker: DockerAPI,
    queue: JobQueue,
    github: GitHubClient,
    registry: Registry,
    removal: Removal,
    assignments: Assignments,
    stats: PoolStats,
    instance: str,
    clock: Callable[[], float],
) -> None:
    """Adopt the runners of the state database into ``registry``, or delete what is left of
    them; Docker and GitHub errors propagate (gantryd then fails to start and says why)."""
    stored = await store.load()
    if not stored:
        return
    containers: dict[str | None, ContainerInfo] = {}
    sidecars: dict[str | None, ContainerInfo] = {}
    for c in await docker.list_managed(instance=instance):
        role = c.labels.get(dind.ROLE_LABEL)
        (sidecars if role == dind.SIDECAR_ROLE else containers)[c.labels.get(RUNNER_LABEL)] = c
    now = clock()
    for record in stored:
        runner = record.runner
        container = containers.get(runner.name)
        runner.lease = await _stored_lease(queue, record)
        if container is None or container.state == "created" or runner.state is RunnerState.REMOVED:
            await _drop_orphan(
                runner, container.id if container else None, github, docker, removal, store, stats
            )
            continue
        runner.container_id = container.id
        if runner.state is RunnerState.CREATING:  # stopped between the start and its record
            if container.state != "running" and await _never_ran(runner, github, stats):
                await _drop_orphan(runner, container.id, github, docker, removal, store, stats)
                continue
            runner.move(RunnerState.STARTING, now=now)
            runner.move(RunnerState.IDLE, now=now)
            await store.save(runner)
        if runner.sidecar and runner.name in sidecars:
            runner.sidecar_id = sidecars[runner.name].id
        registry.add(runner)
        stats.outcomes[Outcome.ADOPTED] += 1
        if runner.state is RunnerState.BUSY and runner.running_job is not None:
            assignments.record_start(runner.running_job, runner.pool, runner.state_since)
        log.info("adopted runner=%s state=%s job=%s", runner.name, runner.state, runner.made_for)
        if container.state != "running" or runner.state is RunnerState.FAILED:
            finished = await _finished_at(docker, container.id)
            runner.mark_exited(now if finished is None else min(now, finished))
            if not runner.waiting:
                await removal.retire(runner)


async def _never_ran(runner: Runner, github: GitHubClient, stats: PoolStats) -> bool:
    """Whether the exited runner of a ``creating`` row provably ran no job: GitHub still had
    its registration, idle, and deleted it now (a JIT runner that ran its job is gone, one
    running it is busy). A kill right after the start leaves such a runner, which exits
    at once for want of its config; its job goes back to the queue with no attempt counted."""
    if runner.runner_id is None:
        return False
    try:
        outcome = await github.delete_runner(
            runner.target, runner.runner_id, installation_id=runner.installation_id
        )
    except GitHubError as exc:
        log.warning("deregistering exited runner=%s failed: %s", runner.name, exc)
        return False
    if outcome is not DeleteOutcome.DELETED:
        return False
    stats.outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] += 1
    runner.runner_id = None  # so _drop_orphan does not ask again
    return True


async def _finished_at(docker: DockerAPI, container_id: str) -> float | None:
    """When the container exited (Unix time) from ``docker inspect``'s ``State.FinishedAt``;
    None while it runs (Docker then says ``0001-01-01T00:00:00Z``), once gone, or unreadable."""
    try:
        inspected: dict[str, Any] = await docker.inspect(container_id)
    except ContainerNotFound:
        return None
    stamp = str(inspected.get("State", {}).get("FinishedAt", ""))
    try:
        finished = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
    return finished if finished > 0 else None


async def _stored_lease(queue: JobQueue, record: StoredRunner) -> Lease | None:
    """The stored lease, if the queue still has the job claimed (by it, or it is stale)."""
    job_id = record.runner.made_for
    if record.lease_token is None or job_id is None or record.lease_expires is None:
        return None
    job = await queue.get(job_id)
    if job is None or job.state is not JobState.CLAIMED:
        return None
    return Lease(job=job, token=record.lease_token, expires_at=record.lease_expires)


async def _drop_orphan(
    runner: Runner,
    container_id: str | None,
    github: GitHubClient,
    docker: DockerAPI,
    removal: Removal,
    store: RunnerStore,
    stats: PoolStats,
) -> None:
    log.info("runner %s has no running container: deleting what is left of it", runner.name)
    if runner.runner_id is not None:
        try:
            outcome = await github.delete_runner(
                runner.target, runner.runner_id, installation_id=runner.installation_id
            )
        except GitHubError as exc:
            log.warning("deregistering orphan runner=%s failed: %s", runner.name, exc)
        else:
            if outcome is not DeleteOutcome.NOT_FOUND:
                stats.outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] += 1
    if runner.sidecar:
        try:
            await dind.remove_pair(docker, runner.name, container_id)
        except DockerError as exc:  # its row goes: garbage collection removes the rest
            log.warning("removing the pair of orphan runner=%s failed: %s", runner.name, exc)
    elif container_id is not None:
        with contextlib.suppress(DockerError):
            await docker.remove(container_id)
    if runner.lease is not None:
        await removal.release(runner.lease)
    await store.delete(runner.name)
