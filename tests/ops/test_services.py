"""The operator's side of a real ``gantryd serve`` (a child process, as systemd runs it) against
the GitHub stand-in and real Docker: SIGTERM and adoption, a reload storm under load, secrets end
to end, and ``gantryd gc``.

Jobs that must still be running at some moment wait on a ``Gate`` the test opens (their script
polls it over loopback: the pools use ``network = "host"``), never on a sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import trio

from agent.config import load_config
from agent.container.secret_injection import SECRETS_DIR
from agent.container.store import open_runner_store
from agent.ops import protocol
from agent.ops.admin_client import AdminClient
from agent.ops.protocol import socket_path
from agent.queue import open_queue
from agent.queue.base import JobState
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import RUNNER_IMAGE, ServeProcess, Setup, emulator_setup, free_port
from tests.container.test_adoption import wait_delivered, wait_removed

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


class Gate:
    """An HTTP endpoint jobs poll: 503 until ``open()``, then 200. Each job polls its own path,
    so the test knows when a given job is running and waiting here."""

    def __init__(self) -> None:
        self.port = 0
        self.is_open = False
        self.polled: set[str] = set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(10):
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                tag = request.split(b" ", 2)[1].decode().strip("/")
                if tag not in self.polled:
                    self.polled.add(tag)
                    self._changed.set()
                    self._changed = trio.Event()
                status = b"200 OK" if self.is_open else b"503 Service Unavailable"
                with suppress(trio.BrokenResourceError):
                    await stream.send_all(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\n\r\n")

    def open(self) -> None:
        self.is_open = True

    def script(self, tag: str, *, before: str = "true") -> str:
        """A job script: ``before``, then wait here until the gate opens, then finish."""
        return (
            f"{before}; until wget -q -O /dev/null http://127.0.0.1:{self.port}/{tag};"
            f" do sleep 0.2; done; echo gate-passed {tag}"
        )

    async def wait_polled(self, *tags: str) -> None:
        while not set(tags) <= self.polled:
            await self._changed.wait()


class Served(ServeProcess):
    """ServeProcess that also hands out what gantryd tells systemd."""

    async def notification(self) -> str:
        return (await self._notify.recv(4096)).decode()

    async def wait_notification(self, pattern: str) -> str:
        """The next notification matching ``pattern`` (a regex); the caller bounds the wait."""
        while not re.search(pattern, message := await self.notification()):
            pass
        return message


@dataclass
class Stack:
    setup: Setup
    serve: Served
    gate: Gate
    intake_url: str
    metrics_url: str

    def gantryd(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """The ``gantryd`` CLI as an operator runs it, against this daemon's config."""
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(self.setup.config_path)],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    async def status(self) -> protocol.Status:
        runtime = load_config(self.setup.config_path).server.runtime_dir
        client = AdminClient(socket_path(runtime))
        return await trio.to_thread.run_sync(client.call, protocol.get_status())

    async def scrape(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(self.metrics_url, timeout=10)).text


@asynccontextmanager
async def served_stack(
    tmp_path: Path, docker_client: docker.DockerClient, **settings: Any
) -> AsyncIterator[Stack]:
    """Emulator, gate, and ``gantryd serve`` (ready, hook added); all stopped on the way out."""
    port, metrics_port = free_port(), free_port()
    async with (
        emulator_setup(tmp_path, listen=f"127.0.0.1:{port}", **settings) as setup,
        trio.open_nursery() as nursery,
    ):
        text = setup.config_path.read_text()
        setup.config_path.write_text(
            text.replace('"127.0.0.1:0"', f'"127.0.0.1:{metrics_port}"', 1)
        )
        gate = Gate()
        await nursery.start(gate.serve)
        serve = Served(setup.config_path, tmp_path)
        try:
            await serve.start()
            with trio.fail_after(30):
                await serve.wait_ready()
            setup.emulator.add_hook(f"http://127.0.0.1:{port}/webhook", setup.webhook_secret)
            yield Stack(
                setup,
                serve,
                gate,
                f"http://127.0.0.1:{port}",
                f"http://127.0.0.1:{metrics_port}/metrics",
            )
        finally:
            gate.open()  # a job left waiting finishes instead of holding its container
            await serve.aclose()
            remove_managed(docker_client, setup.instance)
            nursery.cancel_scope.cancel()


def metric(scrape: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in scrape.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def replace_file(path: Path, text: str) -> None:
    """Write as editors and config tools do (a new file renamed over the old), so a reload never
    reads half a file."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


def assert_clean_log(log: str) -> None:
    assert "Traceback" not in log, log
    assert " ERROR " not in log.replace("reload failed", ""), log


# -- SIGTERM -----------------------------------------------------------------------------------


async def test_sigterm_exits_0_leaves_the_job_running_and_the_next_start_adopts_it(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    async with served_stack(tmp_path, docker_client) as stack:
        emulator, serve, gate = stack.setup.emulator, stack.serve, stack.gate
        job = emulator.create_job("octo-org/app", ["self-hosted"], gate.script("held"))
        with trio.fail_after(60):
            await gate.wait_polled("held")
            await wait_delivered(emulator, {job.id}, "in_progress")
        (container,) = docker_client.containers.list(
            filters={"label": f"io.gantryd.instance={stack.setup.instance}"}
        )

        assert serve.process is not None
        serve.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await serve.process.wait() == 0
        with pytest.raises(httpx.ConnectError):  # intake stopped with it
            async with httpx.AsyncClient() as client:
                await client.get(stack.intake_url + "/healthz", timeout=5)
        container.reload()
        assert container.status == "running"  # the job goes on without gantryd
        log = serve.log.read_text()
        assert "SIGTERM: stopping; runner containers keep running" in log
        assert_clean_log(log)

        await serve.start()
        with trio.fail_after(30):
            await serve.wait_ready()
        gate.open()
        with trio.fail_after(60):
            await emulator.wait_job(job.id, "completed")
            await wait_delivered(emulator, {job.id}, "completed")
            await trio.to_thread.run_sync(wait_removed, container)
        assert emulator.job(job.id).conclusion == "success"
        assert b"gate-passed held" in emulator.job(job.id).log
        await serve.stop()
        assert serve.process.returncode == 0
        log = serve.log.read_text()
        assert f"adopted runner={container.name}" in log
        assert_clean_log(log)
        assert managed_containers(docker_client, stack.setup.instance) == []

        config = load_config(stack.setup.config_path)
        async with open_queue(config) as queue:
            entry = await queue.get(job.id)
        assert entry is not None and entry.state is JobState.DONE
        assert (entry.conclusion, entry.attempts) == ("success", 0)
        async with open_runner_store(config.server.state_dir) as store:
            usage = await store.usage(job.id)
        assert usage is not None and usage.runner == container.name


# -- reload storm ------------------------------------------------------------------------------


async def test_a_reload_storm_while_jobs_run_loses_nothing_and_ends_on_the_last_good_file(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    async with served_stack(
        tmp_path, docker_client, pool={"max_runners": 3}, scheduler={"max_runners": 6}
    ) as stack:
        emulator, serve, gate = stack.setup.emulator, stack.serve, stack.gate
        path = stack.setup.config_path
        good = path.read_text()
        assert good.count("max_runners = 3") == 1  # the pool's; the scheduler's is 6

        def valid(pool_max: int) -> str:
            return good.replace("max_runners = 3", f"max_runners = {pool_max}")

        broken = good.replace("max_runners = 3", "max_runners = -1")
        assert serve.process is not None
        jobs = [
            emulator.create_job(repo, ["self-hosted"], gate.script(f"storm-{i}"))
            for i, repo in enumerate(["octo-org/app", "octo-org/lib", "octo-org/web"] * 2)
        ]

        # One reload at a time: each answer (READY=1 with STATUS=) belongs to its own file.
        for i in range(16):
            ok = i % 2 == 1
            replace_file(path, valid(2 + i % 3) if ok else broken)
            serve.process.send_signal(signal.SIGHUP)
            with trio.fail_after(10):
                answer = await serve.wait_notification("READY=1")
            assert "RELOADING=1" not in answer  # RELOADING=1 is its own message, before it
            if ok:
                assert "STATUS=reloaded" in answer, answer
            else:
                assert "STATUS=reload failed, old config kept" in answer, answer
                assert "scheduler.max_runners" not in answer and "max_runners" in answer
            if i == 4:  # the failure also shows in the periodic STATUS= line
                with trio.fail_after(15):
                    await serve.wait_notification("last reload failed, old config in force")
            if i == 8:
                gate.open()
        # Then a burst without waiting: the last file written is valid and read last.
        for i in range(10):
            replace_file(path, valid(4) if i % 2 else broken)
            serve.process.send_signal(signal.SIGHUP)

        with trio.fail_after(30):
            while True:
                status = await stack.status()
                if status.config.last_reload_ok and status.pools[0].max_runners == 4:
                    break
                await serve.wait_notification("READY=1")
        with trio.fail_after(90):
            for job in jobs:
                await emulator.wait_job(job.id, "completed")
            await wait_delivered(emulator, {j.id for j in jobs}, "completed")
            await gate.wait_polled(*(f"storm-{i}" for i in range(6)))
        assert [emulator.job(j.id).conclusion for j in jobs] == ["success"] * 6
        assert len({emulator.job(j.id).runner_name for j in jobs}) == 6

        shown = json.loads(stack.gantryd("status", "--json").stdout)
        assert shown["config"]["last_reload_ok"] is True
        assert shown["pools"][0]["max_runners"] == 4
        # The gauge is copied from the daemon every SAMPLE_INTERVAL: no event says when.
        reload_ok = "gantryd_config_last_reload_successful"
        with trio.fail_after(30):
            while metric(scrape := await stack.scrape(), reload_ok) != 1:  # noqa: ASYNC110
                await trio.sleep(0.5)
        # One runner per job: no job was served twice.
        assert metric(scrape, "gantryd_runner_outcomes_total", outcome="created") == 6

        await serve.stop()
        assert serve.process.returncode == 0
        log = serve.log.read_text()
        assert log.count("reload failed, keeping the running configuration") >= 8
        assert "Traceback" not in log
        async with open_queue(load_config(path)) as queue:
            for job in jobs:
                entry = await queue.get(job.id)
                assert entry is not None and entry.state is JobState.DONE
                assert (entry.conclusion, entry.attempts) == ("success", 0)


# -- secrets -----------------------------------------------------------------------------------

VALUE = "npm_E2E-s3cr3t-value-that-must-never-leak"


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


async def test_a_pool_secret_reaches_the_job_and_nothing_else(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    async with served_stack(tmp_path, docker_client, pool={"secrets": ["NPM_TOKEN"]}) as stack:
        emulator, gate = stack.setup.emulator, stack.gate
        stored = stack.gantryd("secrets", "set", "NPM_TOKEN", stdin=VALUE + "\n")
        assert stored.returncode == 0 and "stored" in stored.stdout, stored.stderr
        digest = hashlib.sha256(VALUE.encode()).hexdigest()
        job = emulator.create_job(
            "octo-org/app",
            ["self-hosted"],
            gate.script("secret", before=f"sha256sum {SECRETS_DIR}/NPM_TOKEN"),
        )
        with trio.fail_after(60):
            await gate.wait_polled("secret")  # the job has read the file and waits
        (container,) = docker_client.containers.list(
            filters={"label": f"io.gantryd.instance={stack.setup.instance}"}
        )
        inspect = json.dumps(docker_client.api.inspect_container(container.id))
        assert VALUE not in inspect and SECRETS_DIR in inspect  # the tmpfs, not its contents
        scrape = await stack.scrape()
        assert "gantryd_" in scrape and VALUE not in scrape
        gate.open()
        with trio.fail_after(60):
            await emulator.wait_job(job.id, "completed")
            await trio.to_thread.run_sync(wait_removed, container)
        finished = emulator.job(job.id)
        assert finished.conclusion == "success", finished.log
        assert f"{digest}  {SECRETS_DIR}/NPM_TOKEN".encode() in finished.log
        assert VALUE.encode() not in finished.log

        audit = stack.gantryd("secrets", "audit", "NPM_TOKEN", "--json")
        assert audit.returncode == 0, audit.stderr
        entries = json.loads(audit.stdout)["audit"]
        assert [e["action"] for e in entries] == ["set", "inject"]
        assert entries[0]["actor"] == "admin socket"
        assert (entries[1]["runner"], entries[1]["job"]) == (container.name, job.id)
        assert VALUE not in audit.stdout

        await stack.serve.stop()
        log = stack.serve.log.read_text()
        assert f"runner started runner={container.name}" in log  # the run was logged
        assert VALUE not in log
        state_dir = load_config(stack.setup.config_path).server.state_dir
        leaked = [p for p in files_under(state_dir) if VALUE.encode() in p.read_bytes()]
        assert leaked == []
        assert (state_dir / "secrets.db").exists()


# -- gantryd gc --------------------------------------------------------------------------------


async def test_gc_through_the_admin_socket_removes_and_names_a_planted_orphan(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    async with served_stack(tmp_path, docker_client) as stack:
        instance = stack.setup.instance
        labels = {"io.gantryd.managed": "true", "io.gantryd.instance": instance}
        orphan = docker_client.containers.create(
            RUNNER_IMAGE,
            ["true"],
            name=f"gantryd-{instance}-0rphan00",
            labels={**labels, "io.gantryd.runner": f"gantryd-{instance}-0rphan00"},
        )
        strangers = [
            docker_client.containers.create(RUNNER_IMAGE, ["true"], labels=other)
            for other in (
                {**labels, "io.gantryd.instance": f"{instance}-other"},  # another gantryd's
                {"io.gantryd.test": "unlabelled"},  # not gantryd's at all
            )
        ]
        try:
            done = stack.gantryd("gc")
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines() == [
                "garbage collection removed 1 object(s):",
                f"  {orphan.name}",
            ]
            with pytest.raises(docker.errors.NotFound):
                orphan.reload()
            for stranger in strangers:
                stranger.reload()  # untouched
            again = stack.gantryd("gc")
            assert (again.returncode, again.stdout) == (0, "nothing to remove\n")
            scrape = await stack.scrape()
            assert metric(scrape, "gantryd_runner_outcomes_total", outcome="gc_removed") == 1
        finally:
            for stranger in strangers:
                stranger.remove(force=True)
