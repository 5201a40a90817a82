"""gantryd killed with SIGKILL while jobs run: the restarted process adopts their containers."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path

import docker
import pytest
import trio
from docker.models.containers import Container

from agent.config import load_config
from agent.container.docker_api import DockerAPI
from agent.container.lifecycle import Outcome, RunnerState
from agent.container.store import open_runner_store
from agent.daemon import Daemon
from agent.emulator.state import Emulator
from agent.queue import open_queue
from agent.queue.base import JobState
from agent.reload import LiveConfig
from agent.systemd import Notifier
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import ServeProcess, emulator_setup, free_port, wait_state

pytestmark = pytest.mark.docker


def wait_removed(container: Container) -> None:
    """Block until Docker has removed the container (or already had)."""
    with contextlib.suppress(docker.errors.NotFound):
        container.wait(condition="removed", timeout=60)


async def wait_delivered(emulator: Emulator, job_ids: set[int], action: str) -> None:
    """Until gantryd answered 2xx to ``action`` of every job (it is committed)."""
    while True:
        done = {
            d.outgoing.job_id
            for d in emulator.deliveries
            if d.outgoing.action == action and d.status == "OK"
        }
        if job_ids <= done:
            return
        await emulator.wait_deliveries(sum(d.status != "pending" for d in emulator.deliveries) + 1)


async def test_sigkill_while_three_jobs_run_then_restart_completes_and_records_them(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    port = free_port()
    async with emulator_setup(tmp_path, listen=f"127.0.0.1:{port}") as setup:
        emulator = setup.emulator
        serve = ServeProcess(setup.config_path, tmp_path)
        try:
            await serve.start()
            with trio.fail_after(30):
                await serve.wait_ready()
            emulator.add_hook(f"http://127.0.0.1:{port}/webhook", setup.webhook_secret)
            jobs = [
                emulator.create_job(repo, ["self-hosted"], "sleep 8; echo finished")
                for repo in ("octo-org/app", "octo-org/lib", "octo-org/app")
            ]
            ids = {job.id for job in jobs}
            with trio.fail_after(60):
                for job in jobs:
                    await emulator.wait_job(job.id, "in_progress")
                await wait_delivered(emulator, ids, "in_progress")

            await serve.kill()
            left = docker_client.containers.list(
                filters={"label": f"io.gantryd.instance={setup.instance}"}
            )
            assert len(left) == 3

            await serve.start()
            with trio.fail_after(30):
                await serve.wait_ready()
            with trio.fail_after(60):
                for job in jobs:
                    await emulator.wait_job(job.id, "completed")
                await wait_delivered(emulator, ids, "completed")
                for container in left:
                    await trio.to_thread.run_sync(wait_removed, container)
            assert managed_containers(docker_client, setup.instance) == []
            assert [emulator.job(j.id).conclusion for j in jobs] == ["success"] * 3
            assert len({emulator.job(j.id).runner_name for j in jobs}) == 3
            await serve.stop()
            assert "adopted runner=" in serve.log.read_text()

            config = load_config(setup.config_path)
            async with open_queue(config) as queue:
                for job in jobs:
                    entry = await queue.get(job.id)
                    assert entry is not None and entry.state is JobState.DONE
                    assert entry.conclusion == "success" and entry.attempts == 0
            async with open_runner_store(config.server.state_dir) as store:
                assert await store.load() == []
                for job in jobs:
                    usage = await store.usage(job.id)
                    assert usage is not None and usage.runner == emulator.job(job.id).runner_name
        finally:
            await serve.aclose()
            remove_managed(docker_client, setup.instance)


async def test_registrations_without_a_container_are_deleted_after_a_restart(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    pool = {"min_idle": 1, "warm_repositories": ["octo-org/app"]}
    async with emulator_setup(
        tmp_path, pool=pool, github={"repositories": ["octo-org/app"]}
    ) as setup:
        emulator = setup.emulator
        scope = emulator.scope_for(repository="octo-org/app")

        def names() -> set[str]:
            return {r.name for r in emulator.runners(scope)}

        try:
            async with trio.open_nursery() as nursery:
                first = Daemon(
                    live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({})
                )
                await nursery.start(first.run)
                assert first.pools is not None
                pools = first.pools
                with trio.fail_after(30):
                    await pools.wait_until(
                        lambda: any(r.state is RunnerState.IDLE for r in pools.runners())
                    )
                (warm,) = pools.runners()
                nursery.cancel_scope.cancel()  # stopped: its warm runner's container keeps running
            # The container vanishes while gantryd is down, and a registration gantryd made
            # but never recorded (a crash right after generate-jitconfig) is left at GitHub.
            docker_client.containers.get(warm.name).remove(force=True)
            unrecorded = f"gantryd-{setup.instance}-0badf00d"
            emulator.generate_jitconfig(
                scope, {"name": unrecorded, "runner_group_id": 1, "labels": ["self-hosted"]}
            )
            assert {warm.name, unrecorded} <= names()
            # And a labelled container of this instance that no runner record knows.
            ghost = docker_client.containers.create(
                "gantryd/stand-in-runner:latest",
                ["true"],
                labels={
                    "io.gantryd.managed": "true",
                    "io.gantryd.instance": setup.instance,
                    "io.gantryd.runner": f"gantryd-{setup.instance}-00000000",
                },
            )

            async with trio.open_nursery() as nursery:
                second = Daemon(
                    live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({})
                )
                await nursery.start(second.run)
                assert second.pools is not None
                outcomes = second.pools.stats.outcomes
                with trio.fail_after(30):
                    await second.pools.wait_until(
                        lambda: outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] >= 2
                    )
                assert not {warm.name, unrecorded} & names()
                # Garbage collection ran before the pool supervisor reported ready.
                with pytest.raises(docker.errors.NotFound):
                    ghost.reload()
                assert outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] == 2
                nursery.cancel_scope.cancel()
        finally:
            remove_managed(docker_client, setup.instance)


async def test_a_runner_that_exited_while_gantryd_was_down_frees_its_capacity_after_restart(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    """Issue 13 §3: adoption dates a dead runner's exit from Docker's ``State.FinishedAt``,
    so a restart does not restart its ``exit_settle`` wait (the only runner slot stayed taken
    for that long, after every restart). With the container dead for longer than
    ``exit_settle``, the first maintenance pass after start frees the slot for a job."""
    pool = {"min_idle": 1, "warm_repositories": ["octo-org/app"]}
    settle = 1.0
    async with emulator_setup(
        tmp_path, pool=pool, scheduler={"max_runners": 1}, github={"repositories": ["octo-org/app"]}
    ) as setup:
        try:
            async with trio.open_nursery() as nursery:
                first = Daemon(
                    live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({})
                )
                await nursery.start(first.run)
                assert first.pools is not None
                pools = first.pools
                with trio.fail_after(30):
                    await pools.wait_until(
                        lambda: any(r.state is RunnerState.IDLE for r in pools.runners())
                    )
                (warm,) = pools.runners()
                nursery.cancel_scope.cancel()  # stopped: its warm runner's container keeps running
            container = docker_client.containers.get(warm.name)
            container.kill()
            container.wait()
            container.reload()
            finished = datetime.fromisoformat(container.attrs["State"]["FinishedAt"]).timestamp()
            await trio.sleep(max(0.0, finished + settle - time.time()))  # dead for exit_settle

            async with trio.open_nursery() as nursery:
                second = Daemon(
                    live=LiveConfig(load_config(setup.config_path)),
                    notifier=Notifier({}),
                    exit_settle=settle,
                )
                intake_url = await nursery.start(second.run)
                assert second.pools is not None
                pools = second.pools

                def second_names() -> set[str]:
                    return {r.name for r in pools.runners()}

                adopted = pools.runners()
                assert [r.name for r in adopted] == [warm.name]
                assert adopted[0].exited_at == pytest.approx(finished, abs=1e-3)
                with trio.fail_after(30):  # the first maintenance pass frees the slot
                    await second.pools.wait_until(lambda: warm.name not in second_names())
                setup.emulator.add_hook(intake_url + "/webhook", setup.webhook_secret)
                job = setup.emulator.create_job("octo-org/app", ["self-hosted"], "true")
                with trio.fail_after(60):
                    await setup.emulator.wait_job(job.id, "completed")
                assert setup.emulator.job(job.id).conclusion == "success"
                nursery.cancel_scope.cancel()
        finally:
            remove_managed(docker_client, setup.instance)


async def test_a_runner_started_just_before_gantryd_stopped_keeps_the_job_it_took(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    runner_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interleaving forced: gantryd is stopped right after Docker started a runner (its
    JIT config written) and before the start was recorded (the row still says ``creating``).
    The runner takes its job while no gantryd runs; the next start must adopt it, not remove
    it: removing it would lose the job at GitHub (its busy runner cannot even be deleted)."""
    port = free_port()
    async with emulator_setup(tmp_path, listen=f"127.0.0.1:{port}") as setup:
        emulator = setup.emulator
        real_start = DockerAPI.start_with_stdin
        started = trio.Event()

        async def start_then_stop(self: DockerAPI, container_id: str, data: bytes) -> None:
            await real_start(self, container_id, data)
            if not started.is_set():
                started.set()
                await trio.sleep_forever()  # where the first gantryd is stopped

        monkeypatch.setattr(DockerAPI, "start_with_stdin", start_then_stop)
        try:
            async with trio.open_nursery() as nursery:
                first = Daemon(
                    live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({})
                )
                await nursery.start(first.run)
                emulator.add_hook(f"http://127.0.0.1:{port}/webhook", setup.webhook_secret)
                job = emulator.create_job("octo-org/app", ["self-hosted"], "sleep 15; echo ok")
                with trio.fail_after(60):
                    await started.wait()
                nursery.cancel_scope.cancel()
            config = load_config(setup.config_path)
            async with open_runner_store(config.server.state_dir) as store:
                (record,) = await store.load()
            assert record.runner.state is RunnerState.CREATING  # the start was not recorded
            with trio.fail_after(60):
                taken = await emulator.wait_job(job.id, "in_progress")  # with no gantryd up
            assert taken.runner_name == record.runner.name

            async with trio.open_nursery() as nursery:
                second = Daemon(live=LiveConfig(config), notifier=Notifier({}))
                await nursery.start(second.run)
                assert second.pools is not None and second.queue is not None
                assert [r.name for r in second.pools.runners()] == [record.runner.name]
                with trio.fail_after(60):
                    await emulator.wait_job(job.id, "completed")
                    await second.pools.wait_no_runners()
                    entry = await wait_state(second.pools, second.queue, job.id, JobState.DONE)
                assert second.pools.stats.outcomes[Outcome.ORPHAN_REGISTRATION_DELETED] == 0
                nursery.cancel_scope.cancel()
            assert emulator.job(job.id).conclusion == "success"
            assert entry.attempts == 0 and entry.conclusion == "success"
            assert managed_containers(docker_client, setup.instance) == []
        finally:
            remove_managed(docker_client, setup.instance)
