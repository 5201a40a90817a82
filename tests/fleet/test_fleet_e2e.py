"""Two and three gantryd hosts on one Redis, end to end: real daemons (separate processes, each
in a network namespace of its own, or on 127.0.0.2, 127.0.0.3, … where namespaces cannot be made:
``host_network``), a real redis-server, real Docker, the emulator delivering each webhook to a
host chosen at random (a load balancer in front of them)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import docker
import pytest
import trio

from agent.emulator import JobStatus
from agent.fleet.reporting import TURN_TTL
from tests.fleet.fleet_stack import (
    Fleet,
    Host,
    fleet,
    outbox_empty,
    outbox_left,
    unfinished,
    until,
)

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

JOBS = 60


def check_runs_per_job(stack: Fleet, job_ids: list[int]) -> dict[int, list[str]]:
    runs: dict[int, list[str]] = collections.defaultdict(list)
    for run in stack.emulator.checks.runs.values():
        runs[int(run.external_id)].append(run.status)
    return {j: runs.get(j, []) for j in job_ids}


async def settle(stack: Fleet, job_ids: list[int]) -> None:
    """Every job done in the queue and reported, no runner or container left."""
    client = stack.redis.client()
    try:
        await until(
            lambda: not unfinished(client, stack.prefix, job_ids),
            "every job DONE in the shared queue",
            deadline=60,
        )
        await until(
            lambda: all(s == ["completed"] for s in check_runs_per_job(stack, job_ids).values()),
            "one completed check run per job",
            deadline=TURN_TTL + 60,  # a killed host's reporting turns expire first
            left=lambda: {
                j: s for j, s in check_runs_per_job(stack, job_ids).items() if s != ["completed"]
            },
        )
        await until(
            lambda: outbox_empty(client, stack.prefix),
            "the outbox drained",
            deadline=TURN_TTL + 60,  # a killed host's reporting turns expire first
            left=lambda: outbox_left(client, stack.prefix),
        )
    finally:
        client.close()
    await until(
        lambda: not any(stack.containers(h) for h in stack.hosts),
        "no runner container left",
        deadline=90,
        left=lambda: {h.instance: stack.container_states(h) for h in stack.hosts},
    )
    await until(lambda: not stack.registered_runners(), "no runner registered", deadline=60)


def assert_served_once(stack: Fleet, job_ids: list[int]) -> None:
    for job_id in job_ids:
        job = stack.emulator.job(job_id)
        assert job.status is JobStatus.COMPLETED and job.conclusion == "success", job_id
    assert check_runs_per_job(stack, job_ids) == {j: ["completed"] for j in job_ids}


def host_of_runner(stack: Fleet, name: str | None) -> Host | None:
    """Runner names carry their host's instance (``<prefix>-<instance>-<hex>``)."""
    return next((h for h in stack.hosts if f"-{h.instance}-" in (name or "")), None)


def forwarded_deliveries(stack: Fleet) -> int:
    """``in_progress``/``completed`` deliveries that landed on a host other than the one whose
    runner they name: only the fleet's event streams can bring those to the runner's host."""
    count = 0
    for d in stack.emulator.deliveries:
        if d.outgoing.event != "workflow_job" or d.status != "OK":
            continue
        payload = json.loads(d.outgoing.body)
        if payload["action"] not in ("in_progress", "completed"):
            continue
        owner = host_of_runner(stack, payload["workflow_job"]["runner_name"])
        if owner is not None and owner.url != d.url:
            count += 1
    return count


def assert_streams_acknowledged(stack: Fleet) -> None:
    client = stack.redis.client()
    try:
        for host in stack.hosts:
            stream = f"{{{stack.prefix}}}:fleet:events:{host.instance}"
            assert client.xlen(stream) > 0, host.instance
            pending = client.xpending(stream, "gantryd")  # type: ignore[no-untyped-call]
            assert pending["pending"] == 0, (host.instance, pending)
    finally:
        client.close()


def assert_no_tracebacks(stack: Fleet) -> None:
    for host in stack.hosts:
        text = host.log.read_text()
        assert "Traceback" not in text, f"{host.instance}:\n{text[-4000:]}"


def runners_by_host(stack: Fleet, job_ids: list[int]) -> collections.Counter[str]:
    """Which host's runner ran each job (runner names carry their host's instance)."""
    ran: collections.Counter[str] = collections.Counter()
    for job_id in job_ids:
        host = host_of_runner(stack, stack.emulator.job(job_id).runner_name)
        ran[host.instance if host is not None else "?"] += 1
    return ran


async def test_two_hosts_serve_60_jobs_of_3_repositories_exactly_once(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    async with fleet(tmp_path, hosts=2, max_runners=3) as stack:
        job_ids = stack.create_jobs(JOBS)
        with trio.fail_after(600):
            for job_id in job_ids:
                await stack.emulator.wait_job(job_id, "completed")
        await settle(stack, job_ids)
        assert_served_once(stack, job_ids)
        ran = runners_by_host(stack, job_ids)
        assert set(ran) == {h.instance for h in stack.hosts}, ran  # both served
        by_url = collections.Counter(d.url for d in stack.emulator.deliveries)
        assert set(by_url) == {h.url for h in stack.hosts}  # both received webhooks
        assert all(d.status == "OK" for d in stack.emulator.deliveries)
        assert forwarded_deliveries(stack) > 0
        assert_streams_acknowledged(stack)
        assert_no_tracebacks(stack)
        # No runner failed to come up: one deleted by the other host's registration sweep while
        # it was being provisioned would have cost its job an attempt.
        assert attempts(stack, job_ids) == {j: 0 for j in job_ids}


def attempts(stack: Fleet, job_ids: list[int]) -> dict[int, int]:
    client = stack.redis.client()
    try:
        return {
            j: int(client.hget(f"{{{stack.prefix}}}:job:{j}", "attempts") or 0) for j in job_ids
        }
    finally:
        client.close()


def completed(stack: Fleet, job_ids: list[int]) -> int:
    return sum(stack.emulator.job(j).status is JobStatus.COMPLETED for j in job_ids)


async def test_three_hosts_survive_a_host_killed_and_redis_restarted_mid_burst(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    """SIGKILL of one host while its runner runs a job: the others run the rest, and the killed
    host adopts its container (still running) when it returns; a Redis restart mid-burst loses
    no job (deliveries answered 503 meanwhile are redelivered by the reconcilers)."""
    async with fleet(tmp_path, hosts=3, max_runners=2) as stack:
        first, second, victim = stack.hosts
        # every third job runs long enough to outlive its host's absence
        job_ids = stack.create_jobs(JOBS, lambda i: "sleep 20" if i % 3 == 0 else "true")
        long_jobs = job_ids[::3]

        def victim_runs_a_long_job() -> bool:
            return any(
                stack.emulator.job(j).status is JobStatus.IN_PROGRESS
                and host_of_runner(stack, stack.emulator.job(j).runner_name) is victim
                for j in long_jobs
            )

        await until(victim_runs_a_long_job, "the third host running a long job", deadline=300)
        done_at_kill = completed(stack, job_ids)
        left_running = stack.containers(victim)
        await stack.kill(victim)
        await until(
            lambda: completed(stack, job_ids) >= done_at_kill + 5,
            "five more jobs done by the other hosts",
            deadline=300,
        )
        stack.redis.stop()
        stack.redis.start()
        await stack.redis.wait_ready()
        before_return = len(victim.log.read_text())
        await stack.start(victim)
        returned_log = victim.log.read_text()[before_return:]
        # Adopted as it was recorded: busy, or still idle when the job's in_progress reached
        # its stream only while it was down (read from the stream right after adoption).
        assert "adopted runner=" in returned_log, returned_log
        with trio.fail_after(600):
            for job_id in job_ids:
                await stack.emulator.wait_job(job_id, "completed")
        await settle(stack, job_ids)
        assert_served_once(stack, job_ids)
        assert not set(left_running) & set(stack.containers(victim))
        ran = runners_by_host(stack, job_ids)
        assert ran[first.instance] and ran[second.instance], ran
        assert forwarded_deliveries(stack) > 0
        for host in (first, second):
            assert "Traceback" not in host.log.read_text(), host.instance
