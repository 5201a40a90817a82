"""A full state disk (a 2 MiB tmpfs filled to the last byte): the services survive it and
recover when space returns, and start-up on it is one line and exit 78."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import httpx
import pytest
import trio

from agent.cli import main
from agent.config import EX_CONFIG, Config, GitHubConfig, QueueConfig, SchedulerConfig, ServerConfig
from agent.demo import demo_stack
from agent.github.auth import Secret, TokenAuth
from agent.github.client import GitHubClient
from agent.orchestrator.status_reporter import StatusReporter
from agent.queue.base import JobSpec, JobState
from agent.queue.sqlite import open_sqlite_queue
from agent.reload import LiveConfig
from agent.storage.errors import DiskFull
from tests.conftest import remove_managed

FILLER = "filler"
T = TypeVar("T")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (root only), unmounted after."""
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> None:
    """Write a file until the disk refuses another byte."""
    with open(disk / FILLER, "ab", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0


def free(disk: Path) -> None:
    (disk / FILLER).unlink()


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state no event announces) until it holds; fail after 30 s."""
    with trio.fail_after(30):
        while True:
            if condition():
                return
            await trio.sleep(0.05)


async def until_async(read: Callable[[], Awaitable[T]], condition: Callable[[T], bool]) -> None:
    with trio.fail_after(30):
        while True:
            if condition(await read()):
                return
            await trio.sleep(0.05)


def spec(job_id: int) -> JobSpec:
    return JobSpec(
        job_id=job_id, run_id=1, run_attempt=1, repository="acme/app", installation_id=1,
        labels=("self-hosted",), pool="default", name="build", head_sha="0" * 40,
    )  # fmt: skip


def live(state_dir: Path) -> LiveConfig:
    return LiveConfig(
        Config(
            path=state_dir / "config.toml",
            server=ServerConfig(state_dir=state_dir, instance="build-1"),
            github=GitHubConfig(api_url="http://127.0.0.1:9", reporting="off"),
            queue=QueueConfig(),
            scheduler=SchedulerConfig(),
            pools=(),
        )
    )


async def test_reporter_survives_a_full_disk_and_catches_up_when_space_returns(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "agent.orchestrator.status_reporter")
    async with (
        open_sqlite_queue(small_disk / "queue.db") as queue,
        GitHubClient("http://127.0.0.1:9", TokenAuth(Secret("t"))) as github,
        trio.open_nursery() as nursery,
    ):
        await queue.enqueue(spec(1))  # an outbox entry the reporter must acknowledge
        fill(small_disk)
        with pytest.raises(DiskFull, match="disk full"):
            await queue.enqueue(spec(2))
        reporter = StatusReporter(
            queue=queue,
            github=github,
            live=live(small_disk),
            instance="b",
            store_path=tmp_path / "reporter.db",  # its own store is not what this test fills
        )
        await nursery.start(reporter.run)
        await until(lambda: any("disk full" in r.getMessage() for r in caplog.records))
        assert await queue.outbox(10)  # not acknowledged, and the reporter is still running
        free(small_disk)
        await until_async(lambda: queue.outbox(10), lambda entries: not entries)
        nursery.cancel_scope.cancel()


def test_serve_on_a_full_disk_exits_78_with_one_line(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (small_disk / "token").write_text("t")
    (small_disk / "webhook-secret").write_text("s")
    (small_disk / "token").chmod(0o600)
    (small_disk / "webhook-secret").chmod(0o600)
    config = small_disk / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nstate_dir = "{small_disk}"\n'
        f'runtime_dir = "{small_disk}/run"\nmetrics_listen = "127.0.0.1:0"\n'
        '[github]\napi_url = "http://127.0.0.1:9"\ntoken_file = "token"\n'
        'webhook_secret_file = "webhook-secret"\n'
        '[[pool]]\nname = "default"\nlabels = ["self-hosted"]\nimage = "gantryd-runner:test"\n'
    )
    (small_disk / "run").mkdir()
    fill(small_disk)
    assert main(["serve", "--config", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if not line.startswith("warning:")] == [
        line for line in err if "disk" in line and "full" in line
    ]
    assert len([line for line in err if "disk" in line]) == 1


@pytest.mark.docker
async def test_daemon_serving_on_a_disk_that_fills_stays_up_and_recovers(
    small_disk: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    body = json.dumps(
        {
            "action": "queued",
            "workflow_job": {
                "id": 77, "run_id": 1, "run_attempt": 1, "name": "t", "workflow_name": "CI",
                "head_sha": "0" * 40, "head_branch": "main", "html_url": "https://x.invalid/x",
                "labels": ["self-hosted", "linux"], "status": "queued", "conclusion": None,
                "runner_name": None,
            },
            "repository": {"full_name": "octo-org/app"},
            "sender": {"login": "octocat"},
        }
    ).encode()  # fmt: skip
    async with demo_stack(small_disk) as stack, httpx.AsyncClient() as client:
        try:
            daemon = stack.daemon
            assert daemon.scheduler is not None and daemon.queue is not None
            await daemon.scheduler.set_drained(True)  # job 77 is not the emulator's: keep it
            signature = (
                "sha256="
                + hmac.new(stack.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
            )
            headers = {
                "X-GitHub-Event": "workflow_job",
                "X-GitHub-Delivery": "d-77",
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature,
            }
            fill(small_disk)
            refused = await client.post(
                stack.intake_url + "/webhook", content=body, headers=headers
            )
            assert refused.status_code == 503 and "disk full" in refused.text
            ready = await client.get(stack.intake_url + "/readyz")
            assert ready.status_code == 503 and "disk full" in ready.text
            assert str(small_disk) in ready.text
            free(small_disk)
            accepted = await client.post(
                stack.intake_url + "/webhook", content=body, headers=headers
            )
            assert accepted.status_code == 201, accepted.text  # created
            job = await daemon.queue.get(77)
            assert job is not None and job.state is JobState.QUEUED
            ready = await client.get(stack.intake_url + "/readyz")
            assert ready.status_code == 200, ready.text
        finally:
            remove_managed(docker_client, stack.instance)
