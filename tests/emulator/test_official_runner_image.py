"""The official-like stand-in runner image (images/official-like-runner/) on the real Docker Engine,
against the emulator: the contract of ghcr.io/actions/actions-runner as read in actions/runner
(images/Dockerfile, src/Misc/layoutroot/run.sh and run-helper.sh.template, Constants.cs,
Program.cs; docs/official-runner.md), including the ways it fails.

Where a case needs a Listener exit code the emulator cannot provoke (self-update 3/4), the test
mounts a small Listener in front of the image's own, so run.sh and run-helper.sh are the image's.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from docker.models.containers import Container

from agent.emulator import Emulator, JobStatus, serve_emulator
from agent.emulator.models import parse_runner_version

from .conftest import jit_config

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "gantryd/stand-in-runner-official:latest"
LISTENER = ROOT / "images/official-like-runner/home/bin/Runner.Listener"
TEST_LABEL = {"io.gantryd.test": "true"}
STRICT: dict[str, Any] = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}


@pytest.fixture(scope="session")
def official_image(docker_client: docker.DockerClient) -> str:
    """The image, built locally (no registry); cached after the first build."""
    build = ROOT / "images/official-like-runner/build.sh"
    subprocess.run(["bash", str(build)], check=True, capture_output=True)
    docker_client.images.get(IMAGE)
    return IMAGE


Start = Callable[..., Container]


@pytest.fixture
def start(docker_client: docker.DockerClient, official_image: str) -> Iterator[Start]:
    """Start `/home/runner/run.sh` (or a given command) detached on the host network; every
    container started is removed at the end, whatever happened."""
    started: list[str] = []

    def run(command: list[str] | None = None, **options: Any) -> Container:
        options.setdefault("network_mode", "host")
        container = docker_client.containers.run(
            official_image,
            command or ["/home/runner/run.sh"],
            detach=True,
            labels=TEST_LABEL,
            **options,
        )
        started.append(container.id)
        return container

    yield run
    for container_id in started:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(container_id).remove(force=True)


EXIT_TIMEOUT = 90  # seconds docker-py waits for a container to exit


async def exit_of(container: Container) -> tuple[int, str]:
    """The container's exit code and its output, once it has exited."""

    def wait() -> tuple[int, str]:
        status = container.wait(timeout=EXIT_TIMEOUT)["StatusCode"]
        return int(status), container.logs().decode(errors="replace")

    return await trio.to_thread.run_sync(wait)


async def until_logged(container: Container, text: str) -> str:
    """Return once the container has printed `text` (callers set the deadline); its output."""
    while True:
        logs: bytes = await trio.to_thread.run_sync(container.logs)
        if text.encode() in logs:
            return logs.decode(errors="replace")
        await trio.sleep(0.2)  # Docker's log, no event of ours


async def until_file(container: Container, path: str) -> None:
    """Return once `path` exists inside the running container (callers set the deadline)."""
    test = ["test", "-e", path]
    while (await trio.to_thread.run_sync(container.exec_run, test))[0] != 0:  # noqa: ASYNC110
        await trio.sleep(0.2)  # a file in the container, no event of ours


def shell(docker_client: docker.DockerClient, script: str, **options: Any) -> tuple[int, str]:
    """Run `bash -c script` in a fresh container of the image; exit code and output."""
    container = docker_client.containers.run(
        IMAGE, ["bash", "-c", script], detach=True, labels=TEST_LABEL, **options
    )
    try:
        status = container.wait(timeout=60)["StatusCode"]
        return int(status), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


# ---------------------------------------------------------------- the image


async def test_image_config_is_upstreams(
    docker_client: docker.DockerClient, official_image: str
) -> None:
    config = docker_client.images.get(official_image).attrs["Config"]
    assert config["User"] == "runner"
    assert config["WorkingDir"] == "/home/runner"
    assert not config.get("Entrypoint") and not config.get("Cmd")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["RUNNER_MANUALLY_TRAP_SIG"] == "1"
    assert env["ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT"] == "1"
    assert env["ImageOS"]
    assert "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE" not in env


async def test_user_and_home_layout_as_upstream(
    docker_client: docker.DockerClient, official_image: str
) -> None:
    script = (
        "id -u; id -g; id -Gn; getent group docker; readlink -f /bin/sh; "
        "stat -c '%n %u:%g %a' /home/runner /home/runner/run.sh "
        "/home/runner/run-helper.sh.template /home/runner/bin /home/runner/bin/Runner.Listener; "
        "command -v bash sudo docker curl jq git; docker --version"
    )
    status, out = await trio.to_thread.run_sync(shell, docker_client, script)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0:2] == ["1001", "1001"]
    assert set(lines[2].split()) == {"runner", "sudo", "docker"}
    assert lines[3].startswith("docker:x:123:")
    assert "/home/runner 1001:1001 777" in lines  # adduser's home, chmod 777
    for path in ("run.sh", "run-helper.sh.template", "bin", "bin/Runner.Listener"):
        assert f"/home/runner/{path} 1001:123 755" in lines  # COPY --chown=runner:docker
    for tool in ("bash", "sudo", "docker", "curl", "jq", "git"):
        assert any(line.endswith(f"/{tool}") for line in lines), tool
    assert any(line.startswith("Docker version") for line in lines)


async def test_passwordless_sudo_works_unless_no_new_privileges(
    docker_client: docker.DockerClient, official_image: str
) -> None:
    status, out = await trio.to_thread.run_sync(
        shell, docker_client, "sudo -n id -u && sudo -n cat /etc/sudoers"
    )
    assert status == 0, out
    assert "0" in out.splitlines()  # (sudo may also warn that the hostname does not resolve)
    assert "%sudo   ALL=(ALL:ALL) NOPASSWD:ALL" in out
    # gantryd's strict profile: no-new-privileges (and no capabilities) makes sudo unusable.
    status, out = await trio.to_thread.run_sync(
        lambda: shell(docker_client, "sudo -n id -u", **STRICT)
    )
    assert status != 0
    assert "no new privileges" in out


# ---------------------------------------------------------------- one job, end to end


async def test_job_runs_as_1001_with_the_jit_files_in_home(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
) -> None:
    encoded = await jit_config(http, app_key, "official-job")
    container = await trio.to_thread.run_sync(
        lambda: start(environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded}, **STRICT)
    )
    script = (
        'echo "uid=$(id -u) shell=$BASH_VERSION pwd=$PWD"\n'
        "stat -c 'file %n %u %s' /home/runner/.runner /home/runner/.credentials "
        "/home/runner/.credentials_rsaparams\n"
        'echo "job-env=${ACTIONS_RUNNER_INPUT_JITCONFIG:-absent}"\n'
        "tr '\\0' '\\n' </proc/1/environ | grep -c '^ACTIONS_RUNNER_INPUT_JITCONFIG=' "
        '| sed "s/^/run.sh-env=/"\n'
        "ls /home/runner/_diag\n"
        "jq -r .agentName /home/runner/.runner\n"
    )
    job = emulator.create_job("acme/app", ["self-hosted", "gantryd"], script)
    with trio.fail_after(60):
        await emulator.wait_job(job.id, JobStatus.COMPLETED)
    log = job.log.decode()
    assert job.exit_code == 0, log
    assert "uid=1001 shell=5." in log
    assert f"pwd=/home/runner/_work/job-{job.id}" in log
    for name in (".runner", ".credentials", ".credentials_rsaparams"):
        assert f"file /home/runner/{name} 1001 " in log
    assert "job-env=absent" in log  # the Listener dropped it for itself and its children ...
    assert "run.sh-env=1" in log  # ... while run.sh (PID 1) keeps it, as upstream
    assert "Runner_" in log and "Worker_" in log
    assert "official-job" in log

    status, out = await exit_of(container)
    assert status == 0, out
    assert "Listening for Jobs" in out
    assert f"Job {job.id} completed with result: Succeeded" in out
    # The ephemeral runner removed its JIT files; _diag stays in the writable layer.
    changes = {c["Path"] for c in await trio.to_thread.run_sync(container.diff)}
    assert "/home/runner/_diag" in changes
    assert "/home/runner/run-helper.sh" in changes
    assert not {"/home/runner/.runner", "/home/runner/.credentials"} & changes


async def test_failed_job_still_exits_0(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
) -> None:
    encoded = await jit_config(http, app_key, "official-fail")
    container = await trio.to_thread.run_sync(
        lambda: start(environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded}, **STRICT)
    )
    job = emulator.create_job("acme/app", ["self-hosted"], "echo before\nfalse\necho after\n")
    with trio.fail_after(60):
        await emulator.wait_job(job.id, JobStatus.COMPLETED)
    assert job.exit_code == 1
    assert b"before" in job.log and b"after" not in job.log  # bash -e {0}
    status, out = await exit_of(container)
    assert status == 0, out
    assert f"Job {job.id} completed with result: Failed" in out


# ---------------------------------------------------------------- read-only root filesystem


async def test_read_only_rootfs_fails_as_upstream(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
) -> None:
    encoded = await jit_config(http, app_key, "official-ro")
    container = await trio.to_thread.run_sync(
        lambda: start(
            environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded},
            read_only=True,
            tmpfs={"/tmp": "size=64m"},
            **STRICT,
        )
    )
    status, out = await exit_of(container)
    assert status == 127, out
    assert "/home/runner/run-helper.sh" in out and "Read-only file system" in out
    (runner,) = emulator.runners(emulator.scope_for(repository="acme/app"))
    assert not emulator.is_online(runner)  # it never reached GitHub


# ---------------------------------------------------------------- run.sh's loop and exit codes

RELAUNCHING_LISTENER = """#!/bin/bash
# In front of the image's Listener: launches 1-3 exit 2, 3 and 4; launch 4 runs the real one.
# Each launch deletes run-helper.sh, so only a copy per loop lets run.sh go on.
n=$(( $(cat /home/runner/launches 2>/dev/null || echo 0) + 1 ))
echo "$n" >/home/runner/launches
rm -f /home/runner/run-helper.sh
echo "launch $n jit=${ACTIONS_RUNNER_INPUT_JITCONFIG:+present}"
case $n in
    1) exit 2 ;;
    2) touch update.finished; exit 3 ;;
    3) touch update.finished; exit 4 ;;
esac
exec /home/runner/bin/Runner.Listener.real "$@"
"""


def listener_dir(tmp_path: Path, front: str) -> Path:
    """A bin/: `front` as Runner.Listener, the image's Listener as Runner.Listener.real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "Runner.Listener").write_text(front)
    (bin_dir / "Runner.Listener.real").write_bytes(LISTENER.read_bytes())
    for path in (bin_dir, *bin_dir.iterdir()):
        path.chmod(0o755)
    return bin_dir


async def test_relaunches_on_2_3_and_4_then_runs_the_job(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
    tmp_path: Path,
) -> None:
    encoded = await jit_config(http, app_key, "official-relaunch")
    bin_dir = listener_dir(tmp_path, RELAUNCHING_LISTENER)
    container = await trio.to_thread.run_sync(
        lambda: start(
            environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded},
            volumes={str(bin_dir): {"bind": "/home/runner/bin", "mode": "ro"}},
            **STRICT,
        )
    )
    job = emulator.create_job("acme/app", ["self-hosted"], "echo relaunched-ok\n")
    with trio.fail_after(90):
        await emulator.wait_job(job.id, JobStatus.COMPLETED)
    assert job.exit_code == 0
    assert b"relaunched-ok" in job.log
    status, out = await exit_of(container)
    assert status == 0, out
    assert out.count("Restarting runner...") == 3
    for n in (1, 2, 3, 4):
        assert f"launch {n} jit=present" in out  # the variable survives in run.sh's environment
    assert "re-launch runner in 5 seconds" in out
    assert out.count("Update finished successfully.") == 2


DEPRECATED_LISTENER = """#!/bin/bash
echo "deprecated listener"
exit 7
"""


@pytest.mark.parametrize(("setting", "expected"), [(None, 0), ("1", 7), ("true", 0), ("0", 0)])
async def test_exit_7_is_passed_out_only_with_the_variable_set_to_1(
    start: Start, tmp_path: Path, setting: str | None, expected: int
) -> None:
    bin_dir = listener_dir(tmp_path, DEPRECATED_LISTENER)
    environment = {"ACTIONS_RUNNER_INPUT_JITCONFIG": "unused"}
    if setting is not None:
        environment["ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE"] = setting
    container = await trio.to_thread.run_sync(
        lambda: start(
            environment=environment,
            volumes={str(bin_dir): {"bind": "/home/runner/bin", "mode": "ro"}},
        )
    )
    status, out = await exit_of(container)
    assert status == expected, out
    assert "deprecated listener" in out


@pytest.mark.parametrize(
    ("setting", "helper_says", "expected"),
    [
        (None, "exit with terminated error", 0),  # the Listener answers 1
        ("true", "Exiting with unknown error code: 7", 0),  # 7, but the scripts want "1"
        ("1", "exit with deprecated version exit code: 7", 7),
    ],
)
async def test_listener_answers_a_deprecated_version_with_7_only_when_asked(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
    setting: str | None,
    helper_says: str,
    expected: int,
) -> None:
    """The emulator's broker refuses the runner's version (2.336.0 below its floor) in the
    shape the runner parses (BrokerHttpClient.cs); the job waiting for it is never assigned."""
    emulator.min_runner_version = parse_runner_version("99.0.0")
    job = emulator.create_job("acme/app", ["self-hosted", "gantryd"], "echo never")
    encoded = await jit_config(http, app_key, "official-old")
    environment = {"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded}
    if setting is not None:
        environment["ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE"] = setting
    container = await trio.to_thread.run_sync(lambda: start(environment=environment, **STRICT))
    status, out = await exit_of(container)
    assert status == expected, out
    assert "Runner version v2.336.0 is deprecated and cannot receive messages." in out
    assert helper_says in out
    assert "Restarting runner..." not in out
    assert (job.status, job.runner_id) == (JobStatus.QUEUED, None)


# ---------------------------------------------------------------- SIGTERM


async def test_sigterm_cancels_the_running_job(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
) -> None:
    encoded = await jit_config(http, app_key, "official-term")
    container = await trio.to_thread.run_sync(
        lambda: start(environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded}, **STRICT)
    )
    script = (
        "trap 'echo step-got-SIGINT; exit 130' INT\n"
        "touch /home/runner/step-started\n"
        "sleep 300 & wait\n"
    )
    job = emulator.create_job("acme/app", ["self-hosted"], script)
    with trio.fail_after(60):
        await until_file(container, "/home/runner/step-started")
    await trio.to_thread.run_sync(lambda: container.kill(signal="SIGTERM"))
    with trio.fail_after(60):
        await emulator.wait_job(job.id, JobStatus.COMPLETED)
    assert b"step-got-SIGINT" in job.log  # the Worker's first word to a step is SIGINT
    assert b"The operation was canceled." in job.log
    status, out = await exit_of(container)
    assert f"Job {job.id} completed with result: Canceled" in out
    # run.sh's wait was cut by the trapped SIGTERM: it exits 128+15 once the helper is done.
    assert status == 143, out


async def test_sigterm_while_idle_closes_the_session(
    emulator: Emulator,
    http: httpx.AsyncClient,
    app_key: rsa.RSAPrivateKey,
    start: Start,
) -> None:
    encoded = await jit_config(http, app_key, "official-idle")
    container = await trio.to_thread.run_sync(
        lambda: start(environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded}, **STRICT)
    )
    (runner,) = emulator.runners(emulator.scope_for(repository="acme/app"))
    with trio.fail_after(60):
        await until_logged(container, "Listening for Jobs")
    assert emulator.is_online(runner)
    await trio.to_thread.run_sync(lambda: container.kill(signal="SIGTERM"))
    status, out = await exit_of(container)
    assert status == 143, out
    assert "Exiting..." in out
    assert not emulator.is_online(runner)  # the session was closed, not left to time out


# ---------------------------------------------------------------- GitHub unreachable


async def test_keeps_retrying_while_github_is_unreachable(
    emulator: Emulator,
    app_key: rsa.RSAPrivateKey,
    start: Start,
    nursery: trio.Nursery,
) -> None:
    async def serve(
        scope: trio.CancelScope, stopped: trio.Event, port: int, *, task_status: Any
    ) -> None:
        with scope:
            await serve_emulator(emulator, port=port, task_status=task_status)
        stopped.set()

    first, first_stopped = trio.CancelScope(), trio.Event()
    url: str = await nursery.start(serve, first, first_stopped, 0)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http:
        encoded = await jit_config(http, app_key, "official-offline")
    first.cancel()
    await first_stopped.wait()

    container = await trio.to_thread.run_sync(
        lambda: start(environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": encoded}, **STRICT)
    )
    with trio.fail_after(60):
        await until_logged(container, "Runner connect error")
    job = emulator.create_job("acme/app", ["self-hosted"], "echo back-online\n")
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    await nursery.start(serve, trio.CancelScope(), trio.Event(), port)
    with trio.fail_after(90):  # the Listener retries session creation every 30 s
        await emulator.wait_job(job.id, JobStatus.COMPLETED)
    assert b"back-online" in job.log
    status, out = await exit_of(container)
    assert status == 0, out
    assert "Runner reconnected." in out
