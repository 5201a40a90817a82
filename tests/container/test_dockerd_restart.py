"""A real restart of the Docker Engine during a run, without systemctl.

dockerd is stopped with SIGTERM (its pid from /var/run/docker.pid) while three jobs run, and
started again exactly as .ci/setup starts it. Without live-restore (.ci/setup does not turn it
on), a stopping dockerd takes every container down with it (here within milliseconds, before a
runner can report its job), so the jobs cannot go on. "Survived" means:

- gantryd does not crash, sees the Engine go and come back, and claims nothing while it is away
  (a job queued during the outage burns no retry, then runs); a job queued after it runs too;
- the runners of the jobs that were running are reconciled: none is left in gantryd's books,
  no container of theirs in Docker (removal failed while the Engine was away: GC removes them);
- those jobs are left to GitHub, which owns a running job (it has no lease here, so gantryd
  never retries it): their queue entries stay RUNNING until GitHub's ``completed`` comes, and
  then end DONE with GitHub's conclusion, never retried. GitHub fails a job whose runner lost
  communication; the emulator does not model that, so the test plays GitHub's part for any job
  whose runner died before it could report. (Only a job still waiting for its runner when
  Docker goes away is an infrastructure failure of gantryd's, retried and then dead-lettered
  with its reason: tests/container/test_pool_manager.py proves those rules.)

Disruptive: every other user of this Engine loses its containers meanwhile. So the test runs
only in a pytest invocation of its own, with ``GANTRYD_DISRUPTIVE=1``, and always leaves an
answering dockerd behind, whether it passed or not::

    GANTRYD_DISRUPTIVE=1 .venv/bin/pytest -m disruptive tests/container/test_dockerd_restart.py
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import trio

from agent.container.lifecycle import RunnerState
from agent.emulator.state import Emulator
from agent.queue.base import JobState
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import REPOSITORIES, pool_stack, wait_entry

pytestmark = [
    pytest.mark.docker,
    pytest.mark.disruptive,
    pytest.mark.skipif(
        os.environ.get("GANTRYD_DISRUPTIVE") != "1",
        reason="restarts dockerd: run alone with GANTRYD_DISRUPTIVE=1 -m disruptive",
    ),
]

ENGINE = "/var/run/docker.sock"
PID_FILE = Path("/var/run/docker.pid")
DOCKERD_LOG = "/var/log/gantryd-dockerd.log"
# .ci/setup's start: the open-files limit raised where this machine allows, dockerd detached
# from us (it must outlive pytest), its output in the same log (appended: the stopped daemon's
# shutdown log stays readable).
START_DOCKERD = (
    'ulimit -Hn 1048576 2>/dev/null || true; ulimit -Sn "$(ulimit -Hn)"; '
    f"nohup /usr/sbin/dockerd --bridge=none --iptables=false >>{DOCKERD_LOG} 2>&1 &"
)
RESTORE_TIMEOUT = 120.0
POLL = 0.25  # seconds between looks at a process outside trio (dockerd starting)
JOB_LABELS = ["self-hosted", "linux"]


async def engine_answers() -> bool:
    """GET /_ping on the Engine's socket (no docker-py: its failed connects leak sockets)."""
    with trio.move_on_after(5):
        try:
            stream = await trio.open_unix_socket(ENGINE)
            async with stream:
                await stream.send_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = b""
                while chunk := await stream.receive_some():
                    reply += chunk
        except (OSError, trio.BrokenResourceError):
            return False
        return reply.split(b"\r\n", 1)[0].endswith(b" 200 OK")
    return False


def dockerd_pid() -> int | None:
    """The pid in dockerd's pid file if that process is alive (not a zombie)."""
    try:
        pid = int(PID_FILE.read_text())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ValueError):
        return None
    return None if stat.rsplit(")", 1)[1].split()[0] == "Z" else pid


async def wait_exited(pid: int) -> None:
    """Until ``pid`` (not our child) has exited: a pidfd turns readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def start_dockerd() -> None:
    subprocess.run(
        ["sh", "-c", START_DOCKERD],
        check=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    )


async def ensure_dockerd() -> None:
    """Leave an answering dockerd, whatever state the test left it in: wait for one that is
    stopping or starting, start one if none runs. Shielded: it runs when a test fails too."""
    started = False
    with trio.CancelScope(shield=True), trio.fail_after(RESTORE_TIMEOUT):
        while not await engine_answers():
            if not started and dockerd_pid() is None:
                await trio.to_thread.run_sync(start_dockerd)
                started = True
            await trio.sleep(POLL)  # no event tells when a starting dockerd answers


@pytest.fixture
def collect_leaked_sockets() -> Iterator[None]:
    """gantryd's docker-py client fails to connect while the Engine is away, and docker-py does
    not close such a socket (a ResourceWarning from a third-party library, as in
    test_monitoring.py). The exceptions that hold them sit in captured log records, so they are
    only freed once pytest drops those: collect them here, in the test's teardown, where its
    warning filter still applies (else they surface at the end of the session)."""
    yield
    gc.collect()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_gantryd_survives_a_restart_of_dockerd(
    tmp_path: Path,
    runner_image: str,
    caplog: pytest.LogCaptureFixture,
    collect_leaked_sockets: None,
) -> None:
    try:
        async with pool_stack(tmp_path, scheduler={"gc_interval": "2s"}) as stack:
            pools, queue = stack.daemon.pools, stack.daemon.queue
            assert pools is not None and queue is not None
            emulator = stack.emulator
            try:
                running = [emulator.create_job(r, JOB_LABELS, "sleep 600") for r in REPOSITORIES]
                with trio.fail_after(60):
                    for job in running:
                        await emulator.wait_job(job.id, "in_progress")
                    await pools.wait_until(
                        lambda: sum(r.state is RunnerState.BUSY for r in pools.runners()) == 3
                    )

                pid = dockerd_pid()
                assert pid is not None, f"no dockerd runs (pid file {PID_FILE})"
                os.kill(pid, signal.SIGTERM)
                with trio.fail_after(90):  # it stops every container first (10 s grace each)
                    await wait_exited(pid)
                    await pools.health.wait_available(False)
                during = emulator.create_job("octo-org/app", JOB_LABELS, "echo during")
                with trio.fail_after(30):
                    await wait_entry(queue, during.id, JobState.QUEUED)

                await ensure_dockerd()
                with trio.fail_after(90):  # the watcher's backoff, at most 30 s per attempt
                    await pools.health.wait_available(True)
                after = emulator.create_job("octo-org/lib", JOB_LABELS, "echo after")

                with trio.fail_after(120):
                    for job in (during, after):
                        await emulator.wait_job(job.id, "completed")
                        await wait_entry(queue, job.id, JobState.DONE)
                    await pools.wait_no_runners()
                assert [emulator.job(j.id).conclusion for j in (during, after)] == ["success"] * 2
                entry = await queue.get(during.id)
                assert entry is not None and entry.attempts == 0  # nothing claimed meanwhile
                assert pools.health.outages >= 1

                client = docker.DockerClient(base_url=f"unix://{ENGINE}")
                try:
                    with trio.fail_after(30):  # removal on exit, or GC every 2 s
                        while managed_containers(client, stack.setup.instance):  # noqa: ASYNC110
                            await trio.sleep(POLL)  # Docker's state, no event of ours
                finally:
                    client.close()

                for job in running:
                    entry = await queue.get(job.id)
                    assert entry is not None and entry.attempts == 0
                    if emulator.job(job.id).status == "in_progress":  # its runner never reported
                        assert entry.state is JobState.RUNNING  # left to GitHub
                        lose_runner(emulator, job.id)
                with trio.fail_after(60):
                    for job in running:
                        await emulator.wait_job(job.id, "completed")
                        await wait_entry(queue, job.id, JobState.DONE)
                for job in running:
                    entry = await queue.get(job.id)
                    assert entry is not None and entry.attempts == 0
                    assert entry.conclusion == emulator.job(job.id).conclusion == "failure"
                caplog.clear()  # passed: drop the records (see collect_leaked_sockets)
            finally:
                await ensure_dockerd()  # gantryd's own clean-up needs the Engine
                client = docker.DockerClient(base_url=f"unix://{ENGINE}")
                try:
                    remove_managed(client, stack.setup.instance)
                finally:
                    client.close()
    finally:
        await ensure_dockerd()


def lose_runner(emulator: Emulator, job_id: int) -> None:
    """GitHub's part when a runner lost communication: its job fails (the emulator's runner
    API is what a runner would call; the test calls it for the runner that died)."""
    job = emulator.job(job_id)
    scope = emulator.scope_for(repository=job.repository.full_name)
    found = emulator.runners(scope, name=job.runner_name)
    assert len(found) == 1, f"job {job_id}: its runner {job.runner_name} is not registered"
    runner = found[0]
    emulator.report_result(runner.secret, job_id, 1, b"The runner lost communication.\n")
