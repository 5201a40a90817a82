"""The stand-in runner image (images/runner/) against the emulator, on the real Docker Engine.

Run exactly as gantryd's strict profile runs runners: host network (loopback only), read-only
root filesystem with a tmpfs /tmp, no capabilities, no-new-privileges, uid 1001.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Conclusion, Emulator, JobStatus

from .conftest import jit_config

pytestmark = pytest.mark.docker

TEST_LABEL = {"io.gantryd.test": "true"}


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Ids of containers a test started; all removed at the end, whatever happened."""
    started: list[str] = []
    yield started
    for container_id in started:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(container_id).remove(force=True)


@pytest.mark.parametrize(
    ("exit_code", "conclusion"), [(1, Conclusion.FAILURE), (0, Conclusion.SUCCESS)]
)
async def test_runner_runs_one_job_and_exits_0(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    docker_client: docker.DockerClient,
    runner_image: str,
    containers: list[str],
    exit_code: int,
    conclusion: Conclusion,
) -> None:
    encoded = await jit_config(http, app_key, f"stand-in-{exit_code}")

    def start() -> str:
        container = docker_client.containers.run(
            runner_image,
            ["/home/runner/run.sh"],
            detach=True,
            network_mode="host",
            read_only=True,
            tmpfs={"/tmp": "size=64m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user="1001",
            environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded},
            labels=TEST_LABEL,
        )
        containers.append(container.id)
        return str(container.id)

    container_id = await trio.to_thread.run_sync(start)
    script = f'echo "hello from $(id -u) in $PWD" && echo data > out.txt && exit {exit_code}\n'
    job = emulator.create_job("acme/app", ["self-hosted", "gantryd"], script)
    with trio.fail_after(60):
        await emulator.wait_job(job.id, JobStatus.COMPLETED)
    assert job.conclusion is conclusion
    assert job.exit_code == exit_code
    assert job.runner_name == f"stand-in-{exit_code}"
    assert b"hello from 1001 in /tmp/_work/job-" in job.log

    def wait_exit() -> tuple[int, bytes]:
        container = docker_client.containers.get(container_id)
        status = container.wait(timeout=60)["StatusCode"]
        return status, container.logs()

    status, logs = await trio.to_thread.run_sync(wait_exit)
    assert status == 0  # the real runner exits 0 after a failed job too (docs/github.md §8.3)
    assert b"hello from 1001" in logs
    assert emulator.runners(emulator.scope_for(repository="acme/app")) == []
