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

from agent.config import load_config
from agent.config.schema import Reload, reload_schema
from agent.container.events import JobEvent
from agent.demo import Stack, demo_emulator, demo_stack
from agent.emulator.models import RunnerScope
from agent.emulator.server import serve_emulator
from agent.ops import protocol
from agent.ops.admin_client import AdminClient
from agent.ops.protocol import socket_path
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
        # The rival remembers a session of its own (long closed): it may close that one by
        # id, never the live session it does not own.
        await cursors.set_session(rival._key, "5b0f3b1e-0000-4000-8000-000000000000")
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


async def test_a_session_left_open_by_a_killed_run_is_closed_and_taken_over(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """A run killed with SIGKILL leaves its session open at GitHub and its id in listener.db.
    Played here by a clean run, then a session opened at the stand-in under that run's owner
    and recorded as the daemon records its own. GitHub would refuse a new session for ~90 s
    (here: for an hour); the next start closes the recorded one and listens at once."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emulator = demo_emulator(key)
    emulator.actions.settings.session_idle = 3600.0  # only closing it frees the scale set
    instance = "demo-takeover"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_emulator, emulator)
        try:
            async with demo_stack(
                tmp_path, source="scale-set", emulator=emulator, key=key, instance=instance
            ) as stack:
                with trio.fail_after(30):
                    await listener_of(stack).wait_state(ListenerState.LISTENING)
                scale_set_key = listener_of(stack)._key
            (scale_set,) = emulator.actions.scale_sets()
            assert scale_set.session is None  # the clean stop closed it
            _, left_open, _ = emulator.actions.create_session(
                RunnerScope(organization="octo-org"), scale_set.id, {"ownerName": instance}
            )
            async with open_cursor_store(tmp_path) as cursors:
                await cursors.set_session(scale_set_key, left_open.id)
            async with demo_stack(
                tmp_path, source="scale-set", emulator=emulator, key=key, instance=instance
            ) as stack:
                listener = listener_of(stack)
                with trio.fail_after(30):
                    await listener.wait_state(ListenerState.LISTENING)
                assert scale_set.session is not None and scale_set.session.id != left_open.id
                admin = AdminClient(socket_path(load_config(stack.config_path).server.runtime_dir))
                status = await trio.to_thread.run_sync(admin.call, protocol.get_status())
                (pool,) = [p for p in status.pools if p.listener is not None]
                assert f"closed session {left_open.id}" in (pool.listener or "")
                job = emulator.create_job("octo-org/app", LABELS, "echo ok", name="after-kill")
                with trio.fail_after(120):
                    await emulator.wait_job(job.id, "completed")
                await assert_ran_once(stack, [job.id])
        finally:
            remove_managed(docker_client, instance)
            nursery.cancel_scope.cancel()


async def test_a_reload_updates_the_scale_sets_labels_and_group_but_not_its_name(
    stack: Stack,
) -> None:
    """labels and runner_group are live: SIGHUP PATCHes the scale set (found by id, so a new
    group moves it); scale_set_name is a restart key (docs/configuration.md, schema): the
    reload names it for a restart and the scale set keeps its name."""
    schema = reload_schema()  # what docs/configuration.md's reload column says (test_schema.py)
    assert schema["pool.labels"] is schema["pool.runner_group"] is Reload.LIVE
    assert schema["pool.scale_set_name"] is Reload.RESTART
    listener = listener_of(stack)
    with trio.fail_after(30):
        await listener.wait_state(ListenerState.LISTENING)
    (scale_set,) = stack.emulator.actions.scale_sets()
    assert scale_set.group.name == "Default"
    stack.emulator.add_runner_group("octo-org", "builders")
    text = stack.config_path.read_text()
    text = text.replace(
        'labels = ["self-hosted", "linux", "x64"]', 'labels = ["self-hosted", "gpu"]'
    )
    text = text.replace(
        'source = "scale-set"',
        'source = "scale-set"\nrunner_group = "builders"\nscale_set_name = "renamed"',
    )
    stack.config_path.write_text(text)
    assert stack.daemon.reload()
    assert stack.daemon.live.restart_pending == ('pool "default".scale_set_name',)
    with trio.fail_after(30):
        await stack.emulator.actions.wait_until(lambda: scale_set.group.name == "builders")
    assert sorted(scale_set.label_names()) == ["default", "gpu", "self-hosted"]
    assert scale_set.name == "default"
    assert [s.id for s in stack.emulator.actions.scale_sets()] == [scale_set.id]  # moved, not new
    assert listener.status.scale_set_error == ""
    # Jobs route by the new labels to the same scale set; its session stayed open throughout.
    job = stack.emulator.create_job("octo-org/app", ["self-hosted", "gpu"], "echo ok", name="gpu")
    with trio.fail_after(120):
        await stack.emulator.wait_job(job.id, "completed")
    await assert_ran_once(stack, [job.id])
    assert listener.status.state is ListenerState.LISTENING

    # A group GitHub does not have: the update fails, is reported, and the session serves on.
    stack.config_path.write_text(text.replace('"builders"', '"no-such-group"'))
    assert stack.daemon.reload()
    with trio.fail_after(30):
        await listener.wait_reconfigured()
    assert 'no single runner group "no-such-group"' in listener.status.scale_set_error
    assert scale_set.group.name == "builders"
    assert listener.status.state is ListenerState.LISTENING


async def test_a_session_the_service_evicted_is_opened_again(stack: Stack) -> None:
    """The service forgets the session (scaleset PR #123): the poll in flight is refused, the
    refresh answers 404, and the listener opens a new session and serves on, no crash."""
    listener = listener_of(stack)
    with trio.fail_after(30):
        await listener.wait_state(ListenerState.LISTENING)
    (scale_set,) = stack.emulator.actions.scale_sets()
    assert scale_set.session is not None
    evicted = scale_set.session.id
    stack.emulator.actions.evict_sessions()
    job = stack.emulator.create_job("octo-org/app", LABELS, "echo ok", name="after-eviction")
    with trio.fail_after(120):
        await stack.emulator.wait_job(job.id, "completed")
    await assert_ran_once(stack, [job.id])
    assert listener.status.state is ListenerState.LISTENING
    assert scale_set.session is not None and scale_set.session.id != evicted
