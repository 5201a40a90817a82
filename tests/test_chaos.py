"""Chaos at the daemon level (issue 13; issue 15's "SIGKILL of gantryd mid-stream"): a burst
of jobs through the GitHub stand-in, a real ``gantryd serve`` SIGKILLed at random points (one
round in ten stopped with SIGTERM instead, while it provisions) and started again, round after
round, for a webhook pool and for a scale-set pool.

At the end every job completed once with success on a runner of its own, its queue entry is
done, and nothing is left: no container, no volume, no registration at GitHub. Each restart's
time to the first new runner (a runner registered after the restart, online at GitHub) is
printed with min/p50/max over the rounds (``pytest -s`` shows it).

Kills per source: 3, or ``GANTRYD_CHAOS_KILLS`` (``make chaos`` runs 10).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import trio

from agent.config import load_config
from agent.emulator.state import Emulator
from agent.queue import open_queue
from agent.queue.base import JobState
from tests.conftest import remove_managed
from tests.container.stack import REPOSITORIES, ServeProcess, emulator_setup, free_port

pytestmark = pytest.mark.docker

KILLS = int(os.environ.get("GANTRYD_CHAOS_KILLS", "3"))
BURST = 8  # jobs created before the first start
PER_ROUND = 3  # jobs created once each restarted gantryd is ready
LABELS = ["self-hosted", "linux"]
# When a round's kill lands (weights): during start-up; at a random moment once runners flow;
# the instant Docker reports a runner container started (before gantryd has recorded it); and
# now and then a SIGTERM while a runner is provisioned (a stop cancels provisioning there).
KILL_MOMENTS = {"start-up": 2, "steady": 4, "container start": 3, "provisioning, SIGTERM": 1}
# github.repositories / organizations are what the registration sweep covers: a kill between
# generate-jitconfig and its record leaves a registration only the sweep deletes.
SOURCES: Mapping[str, Mapping[str, Any]] = {
    "webhook": {"github": {"repositories": list(REPOSITORIES[:2])}},
    "scale-set": {
        "pool": {"source": "scale-set", "scope": "organization"},
        "github": {"organizations": ["octo-org"]},
    },
}


def registrations(emulator: Emulator) -> list[str]:
    """Names of every runner registered at the stand-in, in each scope gantryd may use."""
    scopes = [emulator.scope_for(repository=r) for r in REPOSITORIES]
    scopes.append(emulator.scope_for(org="octo-org"))
    return [runner.name for scope in scopes for runner in emulator.runners(scope)]


def new_runner_online(emulator: Emulator, known: set[str]) -> Callable[[], bool]:
    """Whether a runner not in ``known`` is registered and online (its container runs and it
    connected): a runner the restarted gantryd started."""
    scopes = [emulator.scope_for(repository=r) for r in REPOSITORIES]
    scopes.append(emulator.scope_for(org="octo-org"))

    def reached() -> bool:
        return any(
            runner.name not in known and emulator.is_online(runner)
            for scope in scopes
            for runner in emulator.runners(scope)
        )

    return reached


def containers_of(client: docker.DockerClient, instance: str) -> list[str]:
    """Ids of the instance's containers; sparse: no inspect, which races gantryd's removals."""
    found = client.containers.list(
        all=True,
        sparse=True,
        filters={"label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"]},
    )
    return [c.id for c in found]


def new_registration(emulator: Emulator) -> Callable[[], bool]:
    """Whether a runner not registered now has been registered since."""
    known = set(registrations(emulator))
    return lambda: bool(set(registrations(emulator)) - known)


def container_starts(client: docker.DockerClient, instance: str) -> Any:
    """Docker's stream of the instance's container starts, from now on (blocking: a thread)."""
    return client.events(
        decode=True,
        filters={
            "type": "container",
            "event": "start",
            "label": [f"io.gantryd.instance={instance}"],
        },
    )


def kill_at_next(starts: Any, pid: int) -> None:
    """SIGKILL ``pid`` as soon as the next start arrives (from this thread: no hop to trio)."""
    try:
        next(iter(starts))
        os.kill(pid, signal.SIGKILL)
    finally:
        starts.close()


def wait_gone(client: docker.DockerClient, instance: str) -> None:
    """Block until the instance has no container (each waited for by Docker, not polled)."""
    while ids := containers_of(client, instance):
        for container_id in ids:
            try:
                client.api.wait(container_id, condition="removed", timeout=120)
            except docker.errors.NotFound:
                continue


def volumes_of(client: docker.DockerClient, instance: str) -> list[str]:
    found = client.volumes.list(
        filters={"label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"]}
    )
    return [v.name for v in found]


def summary(samples: list[float]) -> str:
    if not samples:
        return "no sample"
    return (
        f"min {min(samples):.2f} s, p50 {statistics.median(samples):.2f} s, "
        f"max {max(samples):.2f} s over {len(samples)} restart(s)"
    )


# The stand-in's webhook sender (httpx) drops the body iterator of a delivery whose connection
# a SIGKILL cut to the garbage collector: a ResourceWarning of the test process, not gantryd's.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. .async_generator object ByteStream"
    ":pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.parametrize("source", list(SOURCES))
async def test_sigkill_at_random_points_loses_no_job_and_runs_none_twice(
    source: str, tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    port = free_port()
    settings = SOURCES[source]
    async with emulator_setup(
        tmp_path,
        listen=f"127.0.0.1:{port}",
        pool=settings.get("pool"),
        github=settings.get("github"),
        # A claim cut by a kill before any runner row recorded it comes back after this.
        queue={"lease": "10s"},
        scheduler={"gc_interval": "5s"},  # the sweep of such registrations, when no restart
    ) as setup:
        emulator = setup.emulator
        serve = ServeProcess(setup.config_path, tmp_path)
        if source == "webhook":
            emulator.add_hook(f"http://127.0.0.1:{port}/webhook", setup.webhook_secret)
        jobs: list[int] = []

        def create(count: int) -> None:
            for _ in range(count):
                repository = random.choice(REPOSITORIES[:2])
                jobs.append(emulator.create_job(repository, LABELS, "sleep 1; echo ok").id)

        to_first_runner: list[float] = []
        kills: Counter[str] = Counter()
        try:
            if source == "scale-set":
                create(BURST)  # messages wait at the Actions service for the listener
            for round_ in range(KILLS + 1):
                known = set(registrations(emulator))
                started = time.monotonic()
                await serve.start()
                with trio.fail_after(60):
                    await serve.wait_ready()
                if round_ == 0 and source == "webhook":
                    create(BURST)
                create(PER_ROUND)  # so each restart has a new runner to start
                if round_ == KILLS:
                    break
                moment = random.choices(list(KILL_MOMENTS), weights=list(KILL_MOMENTS.values()))[0]
                kills[moment] += 1
                if moment == "start-up":  # adoption, GC, first claims
                    await trio.sleep(random.uniform(0.0, 1.0))
                else:
                    with trio.fail_after(120):
                        await emulator.wait_until(new_runner_online(emulator, known))
                    to_first_runner.append(time.monotonic() - started)
                if moment == "steady":  # runners starting, running, ending; deliveries
                    await trio.sleep(random.uniform(0.0, 3.0))
                elif moment == "container start":  # Docker says a runner started: gantryd is
                    assert serve.process is not None  # about to record that
                    starts = await trio.to_thread.run_sync(
                        container_starts, docker_client, setup.instance
                    )
                    create(2)
                    with trio.fail_after(120):
                        await trio.to_thread.run_sync(
                            kill_at_next, starts, serve.process.pid, abandon_on_cancel=True
                        )
                elif moment == "provisioning, SIGTERM":  # a runner registered: its container
                    create(2)  # is being created and started
                    with trio.fail_after(120):
                        await emulator.wait_until(new_registration(emulator))
                    await trio.sleep(random.uniform(0.0, 0.3))
                if moment == "provisioning, SIGTERM":
                    await serve.stop()  # as systemctl stop: provisioning is cancelled
                    assert serve.process is not None and serve.process.returncode == 0
                else:
                    await serve.kill()
            print(
                f"\nchaos ({source}, {KILLS} kills: {dict(kills)}, {len(jobs)} jobs): restart -> "
                f"first new runner online: {summary(to_first_runner)}"
            )

            with trio.fail_after(300):
                for job_id in jobs:
                    await emulator.wait_job(job_id, "completed")
                await trio.to_thread.run_sync(wait_gone, docker_client, setup.instance)
                await emulator.wait_until(lambda: not registrations(emulator))
            await serve.stop()
            assert serve.process is not None and serve.process.returncode == 0
        finally:
            await serve.aclose()
            left = containers_of(docker_client, setup.instance)
            remove_managed(docker_client, setup.instance)
        assert left == []
        assert volumes_of(docker_client, setup.instance) == []
        conclusions = Counter(str(emulator.job(j).conclusion) for j in jobs)
        assert conclusions == {"success": len(jobs)}
        runners = Counter(emulator.job(j).runner_name for j in jobs)
        assert max(runners.values()) == 1  # one job per single-use runner: none ran twice
        async with open_queue(load_config(setup.config_path)) as queue:
            for job_id in jobs:
                entry = await queue.get(job_id)
                assert entry is not None and entry.state is JobState.DONE, (job_id, entry)
                assert entry.conclusion == "success"
        assert "Traceback" not in serve.log.read_text()
