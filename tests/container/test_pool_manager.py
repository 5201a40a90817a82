"""The pool supervisor against the GitHub stand-in and the real Docker Engine.

Warm pool, caps under a burst, runner "stealing", exit before a job, OOM, safe scale-down, no
claims while Docker is away, and the JIT config's absence from everything ``docker inspect``
and the logs show. The timeouts the maintenance pass carries out are in test_maintenance.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import docker
import pytest
import trio
from docker.models.containers import Container

from agent.container.lifecycle import Outcome, Runner, RunnerState
from agent.container.pool_manager import PoolManager
from agent.emulator.webhooks import Faults
from agent.github.client import JitConfig, RunnerInfo, RunnerTarget
from agent.queue.base import JobQueue, JobState
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import RelayProcess, Stack, pool_stack, wait_entry, wait_state

pytestmark = pytest.mark.docker

JOB_LABELS = ["self-hosted", "linux"]
MiB = 1024 * 1024


@asynccontextmanager
async def stack_of(
    tmp_path: Path, client: docker.DockerClient, **settings: Any
) -> AsyncIterator[Stack]:
    async with pool_stack(tmp_path, **settings) as stack:
        try:
            yield stack
        finally:
            remove_managed(client, stack.setup.instance)


def parts(stack: Stack) -> tuple[PoolManager, JobQueue]:
    assert stack.daemon.pools is not None and stack.daemon.queue is not None
    return stack.daemon.pools, stack.daemon.queue


async def wait_warm_online(stack: Stack, pools: PoolManager) -> Runner:
    """Until a warm runner is idle here and connected at GitHub; return it."""
    await pools.wait_until(lambda: bool(idle_warm(pools)))
    runner = idle_warm(pools)[0]
    assert runner.runner_id is not None
    await stack.emulator.wait_runner(runner.runner_id)
    return runner


def read_logs_until(container: Container, marker: bytes) -> bytes:
    """Re-read the container's log until ``marker`` appears (the caller bounds the wait).

    Not ``logs(follow=True)``: closing docker-py's log stream leaves its socket to the garbage
    collector (a ResourceWarning, an error under this suite's filterwarnings).
    """
    while marker not in (seen := cast(bytes, container.logs())):
        time.sleep(0.05)
    return seen


def idle_warm(pools: PoolManager) -> list[Runner]:
    return [r for r in pools.runners() if r.warm and r.state is RunnerState.IDLE]


async def test_warm_runner_takes_the_job_and_the_pool_refills(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    pool = {"min_idle": 1, "warm_repositories": ["octo-org/app"], "max_runners": 3}
    async with stack_of(tmp_path, docker_client, pool=pool) as stack:
        pools, _ = parts(stack)
        emulator = stack.emulator
        with trio.fail_after(30):
            warm = await wait_warm_online(stack, pools)
        created = pools.stats.outcomes[Outcome.CREATED]
        job = emulator.create_job("octo-org/app", JOB_LABELS, "echo warm")
        with trio.fail_after(30):
            await emulator.wait_job(job.id, "completed")
        assert emulator.job(job.id).runner_name == warm.name
        assert warm.created_at < job.created_at  # no container start on the job's path
        # The pool refills to min_idle with a new runner.
        with trio.fail_after(30):
            await pools.wait_until(lambda: any(r.name != warm.name for r in idle_warm(pools)))
        assert pools.stats.outcomes[Outcome.CREATED] == created + 1
        assert len(idle_warm(pools)) == 1


async def test_burst_of_30_jobs_respects_global_and_per_repository_caps(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with stack_of(
        tmp_path,
        docker_client,
        scheduler={"max_runners": 3},
        pool={"max_runners": 3, "max_concurrent": 2},
    ) as stack:
        pools, queue = parts(stack)
        emulator = stack.emulator
        # In blocks, so the first repository's jobs fill the head of the queue.
        jobs = [
            emulator.create_job(repo, JOB_LABELS, f"echo {repo} {i}")
            for repo in ("octo-org/app", "octo-org/lib", "octo-org/web")
            for i in range(10)
        ]
        with trio.fail_after(300):
            for job in jobs:
                await emulator.wait_job(job.id, "completed")
            await pools.wait_no_runners()
        assert [emulator.job(j.id).conclusion for j in jobs] == ["success"] * 30
        assert pools.stats.peak_runners == 3
        assert max(pools.stats.peak_by_repository.values()) == 2
        assert managed_containers(docker_client, stack.setup.instance) == []
        for job in jobs:
            entry = await queue.get(job.id)
            assert entry is not None and entry.state is JobState.DONE


async def test_host_memory_budget_caps_runners(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    share = 0.01
    memory = int(host * share / 2.5) // MiB  # two runners fit the budget, a third does not
    async with stack_of(
        tmp_path,
        docker_client,
        scheduler={"max_runners": 4, "host_memory_share": share},
        pool={"max_runners": 4, "memory": f"{memory}MiB"},
    ) as stack:
        pools, _ = parts(stack)
        jobs = [
            stack.emulator.create_job(repo, JOB_LABELS, "sleep 1")
            for repo in ("octo-org/app", "octo-org/lib", "octo-org/web") * 2
        ]
        with trio.fail_after(120):
            for job in jobs:
                await stack.emulator.wait_job(job.id, "completed")
        assert pools.stats.peak_runners == 2


async def test_runner_made_for_one_job_runs_another_and_both_complete(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with stack_of(tmp_path, docker_client) as stack:
        pools, queue = parts(stack)
        emulator = stack.emulator
        # gantryd never hears of job A (its `queued` delivery is lost), so the runner made for
        # job B takes A, the older job (GitHub's rule); B goes back to the queue and gets a
        # runner of its own.
        emulator.faults = Faults(drop_rate=1.0)
        job_a = emulator.create_job("octo-org/app", JOB_LABELS, "echo a")
        with trio.fail_after(10):
            await emulator.wait_deliveries(2)  # the ping, and A's lost delivery
        emulator.faults = Faults()
        job_b = emulator.create_job("octo-org/app", JOB_LABELS, "echo b")
        with trio.fail_after(60):
            await emulator.wait_job(job_a.id, "completed")
            await emulator.wait_job(job_b.id, "completed")
            await pools.wait_no_runners()
        a, b = emulator.job(job_a.id), emulator.job(job_b.id)
        assert (a.conclusion, b.conclusion) == ("success", "success")
        assert a.runner_name != b.runner_name
        assert pools.stats.outcomes[Outcome.CREATED] == 2
        entry = await queue.get(job_b.id)
        assert entry is not None and entry.state is JobState.DONE and entry.attempts == 0


async def test_runner_exiting_before_a_job_is_retried_then_dead_lettered(
    tmp_path: Path, docker_client: docker.DockerClient, exiting_image: str
) -> None:
    async with stack_of(
        tmp_path,
        docker_client,
        exit_settle=0.5,
        pool={"image": exiting_image},
        queue={"retry_attempts": 1, "retry_delay": "1s"},
    ) as stack:
        pools, queue = parts(stack)
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "echo never")
        with trio.fail_after(60):
            entry = await wait_state(pools, queue, job.id, JobState.DEAD)
            await pools.wait_no_runners()
        assert entry.attempts == 2
        assert "before taking a job" in (entry.last_error or "")
        assert pools.stats.outcomes[Outcome.EXIT_BEFORE_JOB] == 2


async def test_oom_kill_is_detected_and_usage_recorded(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with stack_of(tmp_path, docker_client, pool={"memory": "48MiB"}) as stack:
        pools, _ = parts(stack)
        script = "head -c 200000000 /dev/zero | tail -c 150000000 >/dev/null; sleep 3"
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, script)
        with trio.fail_after(60):
            await stack.emulator.wait_job(job.id, "completed")
            await pools.wait_no_runners()
        usage = await pools.usage(job.id)
        assert usage is not None
        assert usage.oom_killed is True
        assert usage.peak_memory > 24 * MiB and usage.cpu_seconds > 0
        assert pools.stats.outcomes[Outcome.OOM_KILLED] == 1


async def test_idle_runner_given_a_job_is_left_alone_when_github_answers_422(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    pool = {"min_idle": 1, "warm_repositories": ["octo-org/app"], "max_idle_age": "1s"}
    async with stack_of(tmp_path, docker_client, pool=pool) as stack:
        pools, _ = parts(stack)
        emulator = stack.emulator
        with trio.fail_after(30):
            await wait_warm_online(stack, pools)
        # The job reaches the warm runner at GitHub while its webhooks are held back: gantryd
        # still sees an idle runner past max_idle_age, and GitHub refuses to delete it.
        emulator.faults = Faults(delivery_latency=6.0)
        job = emulator.create_job("octo-org/app", JOB_LABELS, "sleep 4")
        with trio.fail_after(30):
            await pools.wait_until(lambda: pools.stats.outcomes[Outcome.SCALE_DOWN_REFUSED] >= 1)
            await emulator.wait_job(job.id, "completed")
        assert emulator.job(job.id).conclusion == "success"


async def test_jit_config_is_never_in_inspect_or_logs(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with stack_of(tmp_path, docker_client) as stack:
        emulator = stack.emulator
        issued: list[str] = []
        generate = emulator.generate_jitconfig

        def spy(*args: Any, **kwargs: Any) -> Any:
            runner, encoded = generate(*args, **kwargs)
            issued.append(encoded)
            return runner, encoded

        emulator.generate_jitconfig = spy  # type: ignore[method-assign]
        job = emulator.create_job("octo-org/app", JOB_LABELS, "sleep 3")
        with trio.fail_after(30):
            await emulator.wait_job(job.id, "in_progress")
        (container,) = docker_client.containers.list(
            filters={"label": f"io.gantryd.instance={stack.setup.instance}"}
        )
        (encoded,) = issued
        attrs = container.attrs
        assert encoded not in json.dumps(attrs)
        assert not any("JITCONFIG" in e for e in attrs["Config"]["Env"] or [])
        with trio.fail_after(30):
            logs = await trio.to_thread.run_sync(
                read_logs_until, container, b"Running job", abandon_on_cancel=True
            )
        assert b"connected" in logs and encoded.encode() not in logs
        # Delivered once on stdin, which Docker closed after it (StdinOnce).
        assert attrs["Config"]["OpenStdin"] is True and attrs["Config"]["StdinOnce"] is True
        # The real runner container has the strict profile (tests/container/test_security.py
        # checks every option; these show the pool supervisor applies it).
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "1001" and host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"] and host["Privileged"] is False
        assert host["ReadonlyRootfs"] is True and host["Memory"] == host["MemorySwap"] > 0
        # No host path or socket: the one mount is the read-only root's /home/runner volume.
        assert [(m["Type"], m["Destination"]) for m in attrs["Mounts"]] == [
            ("volume", "/home/runner")
        ]
        labels = attrs["Config"]["Labels"]
        for key in ("managed", "instance", "pool", "runner", "job", "created", "expires"):
            assert f"io.gantryd.{key}" in labels


# docker-py leaves the socket of a failed connect to the garbage collector (test_monitoring.py).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_no_job_is_claimed_while_docker_is_away(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Between gantryd and the Engine, a relay that goes away as a stopped dockerd does (the
    real restart is tests/container/test_dockerd_restart.py): a job queued meanwhile waits
    without burning a retry, and runs once Docker is back."""
    relay = RelayProcess(str(tmp_path / "docker.sock"))
    try:
        with trio.fail_after(30):
            await relay.start()
        async with stack_of(tmp_path, docker_client, docker_url=f"unix://{relay.path}") as stack:
            pools, queue = parts(stack)
            await relay.stop()
            with trio.fail_after(30):
                await pools.health.wait_available(False)
            job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "echo later")
            with trio.fail_after(30):
                await wait_entry(queue, job.id, JobState.QUEUED)
                await relay.start()
            with trio.fail_after(60):
                await stack.emulator.wait_job(job.id, "completed")
                entry = await wait_state(pools, queue, job.id, JobState.DONE)
    finally:
        await relay.stop()
    assert stack.emulator.job(job.id).conclusion == "success"
    assert entry.attempts == 0  # never claimed while Docker was away


async def test_registration_sweep_never_deletes_a_runner_registered_during_its_list_call(
    tmp_path: Path, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 §2, the interleaving forced: the sweep's runner list is held until a runner
    for a new job has registered at GitHub (and is held offline, before its container), then
    answered; that runner must survive the sweep and take its job."""
    github_table = {"repositories": ["octo-org/app"]}  # a sweep target before any runner
    async with stack_of(tmp_path, docker_client, github=github_table) as stack:
        pools, _ = parts(stack)
        github = stack.daemon.github
        assert github is not None
        real_list, real_jit = github.list_runners, github.generate_jitconfig
        list_entered, registered, swept = trio.Event(), trio.Event(), trio.Event()
        hold_list = True

        async def held_list(target: RunnerTarget, **kwargs: Any) -> list[RunnerInfo]:
            if hold_list:
                list_entered.set()
                await registered.wait()
            return await real_list(target, **kwargs)

        async def held_jit(target: RunnerTarget, **kwargs: Any) -> JitConfig:
            jit = await real_jit(target, **kwargs)
            registered.set()
            await swept.wait()  # offline at GitHub until the sweep is over
            return jit

        monkeypatch.setattr(github, "list_runners", held_list)
        monkeypatch.setattr(github, "generate_jitconfig", held_jit)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                deleted: list[int] = []

                async def sweep() -> None:
                    deleted.append(await pools.sweep_registrations())
                    swept.set()

                nursery.start_soon(sweep)
                await list_entered.wait()
                hold_list = False  # the GC loop's own sweeps pass straight through
                job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "true")
            assert deleted == [0]
            await stack.emulator.wait_job(job.id, "completed")
        assert stack.emulator.job(job.id).conclusion == "success"
        assert pools.stats.outcomes[Outcome.PROVISION_FAILED] == 0


async def test_a_runner_still_coming_up_whose_job_completed_elsewhere_is_scaled_down(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """With one runner provisioned at a time, the runner made for the second job waits in
    CREATING; that job is cancelled on GitHub meanwhile (another host's runner, in a fleet, or
    an operator). The surplus runner is scaled down (the provisioner removes what it goes on to
    make) and the pool supervisor carries on (it used to fail on CREATING -> REMOVED)."""
    async with stack_of(
        tmp_path, docker_client, scheduler={"concurrency": 1, "max_runners": 2}
    ) as stack:
        pools, _ = parts(stack)
        emulator = stack.emulator
        first = emulator.create_job("octo-org/app", JOB_LABELS, "true")
        second = emulator.create_job("octo-org/app", JOB_LABELS, "true")

        def waiting_for_second() -> list[Runner]:
            return [r for r in pools.runners() if r.made_for == second.id]

        with trio.fail_after(30):
            await pools.wait_until(lambda: bool(waiting_for_second()))
        (runner,) = waiting_for_second()
        assert runner.state in (RunnerState.CREATING, RunnerState.STARTING)
        emulator.cancel_job(second.id)
        with trio.fail_after(60):
            await pools.wait_until(lambda: runner not in pools.runners())
            await emulator.wait_job(first.id, "completed")
        assert emulator.job(first.id).conclusion == "success"
