"""The .deb as a user meets it: apt install, systemctl, reload, upgrade and purge on Debian 12.

One scenario in one systemd container, because each step starts from the state the previous one
left (as on a real host); the assertion messages say which step failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import remove_managed
from tests.packaging.packaging_support import Debs
from tests.packaging.systemd_box import DOCKER_SOCKET, SystemdBox, cached_image

pytestmark = [pytest.mark.packaging, pytest.mark.docker]

REPOSITORY = "octo-org/app"
INSTALLATION_ID = 1001
APP_ID = 424242
SECURITY_TARGET = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Emulator:
    """The GitHub stand-in, run on the host as `gantryd emulator`; the box shares its network."""

    process: subprocess.Popen[str]
    url: str
    key_pem: str
    webhook_secret: str

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            result: dict[str, object] = json.load(answer)
            return result

    def get(self, path: str, *, timeout: float = 30) -> dict[str, object]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:
            result: dict[str, object] = json.load(answer)
            return result


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[Emulator, int]]:
    """The emulator, delivering webhooks to the port gantryd will listen on in the box."""
    intake_port = free_port()
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(secrets.token_hex(20))
    key = tmp_path / "app.pem"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--app-id",
            str(APP_ID),
            "--generate-app-key",
            str(key),
            "--webhook-url",
            f"http://127.0.0.1:{intake_port}/webhook",
            "--webhook-secret-file",
            str(secret_file),
            "--installation",
            f"{REPOSITORY}={INSTALLATION_ID}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = _announced_url(process, deadline=30)
        yield Emulator(process, url, key.read_text(), secret_file.read_text()), intake_port
    finally:
        process.terminate()
        process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


def _announced_url(process: subprocess.Popen[str], deadline: float) -> str:
    """The base URL from the emulator's "GitHub stand-in at URL" line."""
    assert process.stdout is not None
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stdout], [], [], left)
        line = process.stdout.readline() if ready else ""
        if match := re.search(r"stand-in at (http://\S+)", line):
            return match.group(1).rstrip("/")
        if ready and not line:
            break  # it exited
    raise AssertionError(f"the emulator did not start (exit status {process.poll()})")


@pytest.fixture
def box() -> Iterator[SystemdBox]:
    machine = SystemdBox.start(cached_image(), f"gantryd-pkgtest-{os.getpid()}")
    try:
        assert machine.wait_booted(deadline=60) == "running", machine.run(
            "systemctl", "--failed", check=False
        ).stdout
        # As on a real host, the docker group owns the Docker socket.
        gid = DOCKER_SOCKET.stat().st_gid
        machine.run("groupmod", "--gid", str(gid), "docker")
        yield machine
    finally:
        machine.remove()


@pytest.fixture
def instance(docker_client: docker.DockerClient) -> Iterator[str]:
    """gantryd's instance name in the box; its runner containers on the host go at the end."""
    name = f"pkgtest-{secrets.token_hex(3)}"
    yield name
    remove_managed(docker_client, name)


def config_toml(emulator_url: str, intake_port: int, image: str, instance: str) -> str:
    return f"""\
[server]
listen = "127.0.0.1:{intake_port}"
metrics_listen = "127.0.0.1:{free_port()}"
instance = "{instance}"

[github]
api_url = "{emulator_url}"
app_id = {APP_ID}
private_key_file = "/etc/gantryd/app.pem"
webhook_secret_file = "/etc/gantryd/webhook-secret"
repositories = ["{REPOSITORY}"]

[scheduler]
max_runners = 2

[[pool]]
name = "default"
labels = ["self-hosted", "linux", "x64"]
image = "{image}"
network = "host"
read_only_rootfs = true
memory = "256MiB"
pids_limit = 256
nofile = 4096  # within this host's dockerd hard limit (20000 here)
tmp_size = "64MiB"
pull_policy = "never"
"""


def apt_install(box: SystemdBox, deb: Path) -> None:
    box.copy_in(deb, f"/root/{deb.name}")
    box.run(
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "--yes",
        f"/root/{deb.name}",
    )


def systemctl(box: SystemdBox, verb: str, *options: str) -> None:
    done = box.run("systemctl", verb, *options, "gantryd", check=False)
    assert done.returncode == 0, f"systemctl {verb} failed: {done.stderr}\n{box.journal()}"


def assert_active(box: SystemdBox, step: str) -> dict[str, str]:
    # Type=notify: `systemctl reload` returns once `kill -HUP` has, and the daemon's RELOADING=1
    # can arrive after that; the unit is settled once its READY=1 follows (deadline 30 s).
    deadline = time.monotonic() + 30.0
    while True:
        state = box.unit("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
        if state["ActiveState"] != "reloading" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), (
        f"{step}: gantryd is not running: {state}\n{box.journal()}"
    )
    assert state["NRestarts"] == "0", f"{step}: gantryd restarted: {state}\n{box.journal()}"
    return state


def wait_status(
    box: SystemdBox, condition: Callable[[dict[str, Any]], bool], deadline: float = 30
) -> dict[str, Any]:
    """`gantryd status --json` in the box, until ``condition`` holds (a reload is applied
    asynchronously to `systemctl reload`, which returns once SIGHUP was sent)."""
    end = time.monotonic() + deadline
    while True:
        status: dict[str, Any] = json.loads(box.run("gantryd", "status", "--json").stdout)
        if condition(status):
            return status
        assert time.monotonic() < end, f"gantryd status never matched: {status}"
        time.sleep(0.2)


def wait_unit(box: SystemdBox, prop: str, old: str, deadline: float = 30) -> None:
    """Until the unit's property differs from ``old``."""
    end = time.monotonic() + deadline
    while (value := box.unit(prop)[prop]) == old:
        assert time.monotonic() < end, f"{prop} stayed {value}\n{box.journal()}"
        time.sleep(0.5)


def test_install_run_reload_upgrade_purge(
    debs: Debs,
    box: SystemdBox,
    emulator: tuple[Emulator, int],
    runner_image: str,
    instance: str,
) -> None:
    github, intake_port = emulator

    # 1. A fresh install leaves gantryd installed, not enabled, not started, nothing failed.
    apt_install(box, debs.first)
    assert box.run("systemctl", "is-enabled", "gantryd", check=False).stdout.strip() == "disabled"
    assert box.unit("ActiveState")["ActiveState"] == "inactive"
    assert box.run("systemctl", "--failed", "--no-legend").stdout.strip() == ""
    assert "docker" in box.run("id", "-nG", "gantryd").stdout.split()
    assert box.run("readlink", "-f", "/opt/gantryd/bin/python").stdout.strip() == (
        "/usr/bin/python3.11"
    )

    # 2. The unit as installed: verify prints nothing, the exposure score is within the target.
    verify = box.run("systemd-analyze", "verify", "gantryd.service", check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), verify
    security = box.run("systemd-analyze", "security", "--no-pager", "gantryd.service").stdout
    score = re.search(r"Overall exposure level for gantryd.service: ([\d.]+)", security)
    assert score is not None and float(score[1]) <= SECURITY_TARGET, security

    # 3. Started unconfigured (the shipped example has no credentials), it fails once with 78
    #    and does not restart-loop.
    check = box.run("gantryd", "check-config", check=False)
    assert check.returncode == 78 and "/etc/gantryd/config.toml" in check.stderr, check
    assert box.run("systemctl", "start", "gantryd", check=False).returncode != 0
    state = box.unit("ActiveState", "ExecMainStatus", "NRestarts")
    assert state == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}, state
    box.run("systemctl", "reset-failed", "gantryd")

    # 4. Configured against the emulator, `enable --now` returns once READY=1 was sent.
    box.write("/etc/gantryd/app.pem", github.key_pem, mode="0600", owner="gantryd")
    box.write("/etc/gantryd/webhook-secret", github.webhook_secret, mode="0600", owner="gantryd")
    config = config_toml(github.url, intake_port, runner_image, instance)
    box.write("/etc/gantryd/config.toml", config)
    systemctl(box, "enable", "--now")
    started = assert_active(box, "start")
    watchdog = box.unit("WatchdogUSec", "WatchdogTimestampMonotonic")
    assert watchdog["WatchdogUSec"] == "30s", watchdog
    assert box.run("stat", "-c", "%U", "/var/lib/gantryd").stdout.strip() == "gantryd"

    # 5. A job runs end to end: webhook -> gantryd in the box -> runner container on the host.
    job = github.post(
        "/_emulator/jobs",
        {"repository": REPOSITORY, "labels": ["self-hosted", "linux"], "script": "echo packaged"},
    )
    done = github.get(f"/_emulator/jobs/{job['id']}?wait_status=completed&timeout=120", timeout=130)
    assert (done["status"], done["conclusion"]) == ("completed", "success"), (
        f"job {done['status']}/{done['conclusion']}: {done['log']}\n{box.journal()}"
    )
    assert "packaged" in str(done["log"])

    # 6. Reload: a valid change is taken without a restart; a broken file fails the reload and
    #    the daemon keeps running on its last good config.
    edited = config.replace("max_runners = 2", "max_runners = 3")
    box.write("/etc/gantryd/config.toml", edited)
    systemctl(box, "reload")
    assert assert_active(box, "valid reload")["MainPID"] == started["MainPID"]
    status = wait_status(box, lambda s: s["config"]["max_runners"] == 3)
    assert status["config"]["last_reload_ok"] is True, status
    # WATCHDOG=1 keeps arriving (systemd stamps each one), so WatchdogSec= never fires.
    wait_unit(box, "WatchdogTimestampMonotonic", watchdog["WatchdogTimestampMonotonic"])
    box.write("/etc/gantryd/config.toml", edited + "\n[pool\n")
    assert box.run("systemctl", "reload", "gantryd", check=False).returncode != 0
    assert assert_active(box, "broken reload")["MainPID"] == started["MainPID"]
    box.write("/etc/gantryd/config.toml", edited)

    # 7. Stop: inactive, and a clean exit (no "failed").
    systemctl(box, "stop")
    state = box.unit("ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, (
        state,
        box.journal(),
    )

    # 8. Upgrade a running gantryd: it restarts into the new version and keeps the edited config.
    systemctl(box, "start")
    before = assert_active(box, "start before upgrade")
    apt_install(box, debs.newer)
    version = box.run("dpkg-query", "-W", "-f", "${Version}", "gantryd").stdout
    assert version == debs.newer.name.split("_")[1], version
    assert box.run("cat", "/etc/gantryd/config.toml").stdout == edited
    after = assert_active(box, "after upgrade")
    assert after["MainPID"] != before["MainPID"], "the upgrade did not restart gantryd"
    assert box.run("systemctl", "is-enabled", "gantryd").stdout.strip() == "enabled"

    # 9. Purge: stopped, and no file of gantryd's is left anywhere.
    box.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "--yes", "gantryd")
    assert box.run("systemctl", "--failed", "--no-legend").stdout.strip() == ""
    left = box.run("find", "/", "-xdev", "-name", "*gantryd*", "-not", "-path", "/root/*").stdout
    assert left == "", f"purge left: {left}"
    for path in ("/etc/gantryd", "/var/lib/gantryd", "/opt/gantryd", "/run/gantryd"):
        assert not box.exists(path), f"purge left {path}"
