"""End to end: a scale-set pool's jobs, learned by long-polling the emulated Actions service
(no webhook configured), run once each in real containers, across restarts and rivals."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import docker
import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.container.events import JobEvent
from agent.demo import Stack, demo_emulator, demo_stack
from agent.emulator.server import serve_emulator
from agent.github.scaleset import ScaleSetClient
from agent.github.scaleset_types import MessageSession
from agent.orchestrator.listener import Listener, ListenerState, open_cursor_store
from agent.queue.base import JobState
from tests.conftest import managed_containers, remove_managed

pytestmark = pytest.mark.docker

LABELS = ["self-hosted", "linux"]


def listener_of(stack: Stack) -> Listener:
    (listener,) = stack.daemon.listeners
    return listener


@pytest.fixture
async def stack(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> AsyncIterator[Stack]:
    async with demo_stack(tmp_path, source="scale-set") as running:
        try:
            yield running
        finally:
            remove_managed(docker_client, running.instance)


async def assert_ran_once(stack: Stack, job_ids: list[int]) -> None:
    emulator = stack.emulator
    assert [emulator.job(j).conclusion for j in job_ids] == ["success"] * len(job_ids)
    runners = Counter(emulator.job(j).runner_name for j in job_ids)
    assert all((name or "").startswith("gantryd-") for name in runners)
    assert max(runners.values()) == 1  # one job per single-use runner: none ran twice
    queue = stack.daemon.queue
    assert queue is not None
    with trio.fail_after(30):  # the JobCompleted messages follow GitHub's own record
        for job_id in job_ids:
            while (entry := await queue.get(job_id)) is None or entry.state is not JobState.DONE:
                await listener_of(stack).wait_handled()


async def test_jobs_of_two_repositories_complete_once_without_a_webhook(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    emulator = stack.emulator
    jobs = [
        emulator.create_job(repo, LABELS, f"echo job {i} in {repo}", name=f"job-{i}")
        for i, repo in enumerate(["octo-org/app", "octo-org/lib"] * 3)
    ]
    with trio.fail_after(180):
        for job in jobs:
            await emulator.wait_job(job.id, "completed")
    await assert_ran_once(stack, [j.id for j in jobs])
    listener = listener_of(stack)
    assert listener.status.state is ListenerState.LISTENING
    assert listener.status.jobs_enqueued == len(jobs)
    async with httpx.AsyncClient() as client:
        ready = await client.get(stack.intake_url + "/readyz")
        assert stack.daemon.metrics_url is not None
        metrics = (await client.get(stack.daemon.metrics_url)).text
    assert ready.status_code == 200, ready.text
    assert 'gantryd_listener_up{pool="default"} 1.0' in metrics
    assert f'gantryd_listener_jobs_queued_total{{pool="default"}} {len(jobs)}.0' in metrics
    assert stack.daemon.pools is not None
    with trio.fail_after(30):
        await stack.daemon.pools.wait_no_runners()
    assert managed_containers(docker_client, stack.instance) == []


async def test_a_restart_mid_stream_loses_none_and_runs_none_twice(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """gantryd is stopped twice: once while its runners run jobs (their JobStarted and
    JobCompleted reach the next session), once right after jobs were acquired and queued
    (their messages may not be acknowledged yet, so they come again and the queue dedupes).
    The last start resumes from the persisted cursor and finishes everything."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emulator = demo_emulator(key)
    instance = "demo-restart"
    jobs: list[int] = []

    def batch(round_: int) -> list[int]:
        created = [
            emulator.create_job(repo, LABELS, "sleep 5; echo ok", name=f"r{round_}-{i}").id
            for i, repo in enumerate(["octo-org/app", "octo-org/lib"] * 2)
        ]
        jobs.extend(created)
        return created

    def stack_again() -> AbstractAsyncContextManager[Stack]:
        return demo_stack(
            tmp_path, source="scale-set", emulator=emulator, key=key, instance=instance
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_emulator, emulator)
        try:
            async with stack_again():
                with trio.fail_after(120):
                    for job_id in batch(0):
                        await emulator.wait_job(job_id, "in_progress")
            async with stack_again() as stack:
                # Provisioning cut by a stop is the pool manager's concern, not this test's:
                # these jobs are only acquired and queued before the stop.
                assert stack.daemon.scheduler is not None
                stack.daemon.scheduler.paused = True
                listener = listener_of(stack)
                with trio.fail_after(60):
                    await listener.wait_state(ListenerState.LISTENING)
                    for job_id in batch(1):
                        await emulator.wait_job(job_id, "queued")
                    while listener.status.jobs_enqueued < 4:
                        await listener.wait_enqueued()
            async with stack_again() as stack:
                with trio.fail_after(240):
                    for job_id in jobs:
                        await emulator.wait_job(job_id, "completed")
                await assert_ran_once(stack, jobs)
                assert stack.daemon.pools is not None
                with trio.fail_after(60):
                    await stack.daemon.pools.wait_no_runners()
        finally:
            remove_managed(docker_client, instance)
            nursery.cancel_scope.cancel()


async def test_a_second_listener_on_the_scale_set_waits_and_steals_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    first = listener_of(stack)
    with trio.fail_after(30):
        await first.wait_state(ListenerState.LISTENING)
    assert stack.daemon.queue is not None and stack.daemon.github is not None
    send, receive = trio.open_memory_channel[JobEvent](16)
    (tmp_path / "rival").mkdir()
    async with (
        open_cursor_store(tmp_path / "rival") as cursors,
        receive,
        trio.open_nursery() as nursery,
    ):
        rival = Listener(
            stack.daemon.live.current.pools[0],
            live=stack.daemon.live,
            queue=stack.daemon.queue,
            github=stack.daemon.github,
            cursors=cursors,
            job_events=send,
            on_enqueue=lambda: None,
            owner="another-host",
        )
        await nursery.start(rival.run)
        with trio.fail_after(30):
            await rival.wait_state(ListenerState.CONFLICT)
        assert "another session holds scale set" in rival.status.reason
        jobs = [
            stack.emulator.create_job(repo, LABELS, "echo ok", name=f"job-{i}")
            for i, repo in enumerate(["octo-org/app", "octo-org/lib"])
        ]
        with trio.fail_after(120):
            for job in jobs:
                await stack.emulator.wait_job(job.id, "completed")
        await assert_ran_once(stack, [j.id for j in jobs])
        assert rival.status.state is ListenerState.CONFLICT  # still waiting, not crashed
        assert (rival.status.messages, rival.status.jobs_enqueued) == (0, 0)
        assert first.status.state is ListenerState.LISTENING
        assert first.status.jobs_enqueued == len(jobs)
        nursery.cancel_scope.cancel()


async def test_queue_token_expiry_mid_poll_recovers(stack: Stack) -> None:
    listener = listener_of(stack)
    with trio.fail_after(30):
        await listener.wait_state(ListenerState.LISTENING)
    done = []
    for i in range(2):
        stack.emulator.actions.expire_queue_tokens()  # the poll in flight is refused with 401
        job = stack.emulator.create_job("octo-org/app", LABELS, "echo ok", name=f"job-{i}")
        with trio.fail_after(120):
            await stack.emulator.wait_job(job.id, "completed")
        done.append(job.id)
    await assert_ran_once(stack, done)
    assert listener.status.state is ListenerState.LISTENING


async def test_the_session_a_killed_gantryd_left_is_closed_at_the_next_start(
    tmp_path: Path,
    runner_image: str,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGKILL closes nothing: the first gantryd here leaves its session open (its close
    never gets an answer, and is given up after SESSION_CLOSE_DEADLINE). GitHub would refuse a
    new session for ~90 s; the next start closes the recorded one and listens at once, well
    within this test's deadline, and learns new jobs."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emulator = demo_emulator(key)
    instance = "demo-stale"

    def stack_again() -> AbstractAsyncContextManager[Stack]:
        return demo_stack(
            tmp_path, source="scale-set", emulator=emulator, key=key, instance=instance
        )

    async def left_open(self: ScaleSetClient, session: MessageSession) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_emulator, emulator)
        try:
            with monkeypatch.context() as patched:
                patched.setattr(ScaleSetClient, "delete_session", left_open)
                async with stack_again() as stack:
                    with trio.fail_after(30):
                        await listener_of(stack).wait_state(ListenerState.LISTENING)
            async with stack_again() as stack:
                listener = listener_of(stack)
                with trio.fail_after(30):  # < the ~90 s an abandoned session holds
                    await listener.wait_state(ListenerState.LISTENING)
                job = emulator.create_job("octo-org/app", LABELS, "echo ok")
                with trio.fail_after(120):
                    await emulator.wait_job(job.id, "completed")
                await assert_ran_once(stack, [job.id])
                assert stack.daemon.pools is not None
                with trio.fail_after(60):
                    await stack.daemon.pools.wait_no_runners()
        finally:
            remove_managed(docker_client, instance)
            nursery.cancel_scope.cancel()
