"""The `gantryd` command as a user runs it: check-config, and serve with signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, serve_emulator

ROOT = Path(__file__).resolve().parent.parent
GANTRYD = [sys.executable, "-m", "agent"]
EX_CONFIG = 78


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    secret = tmp_path / "webhook-secret"
    secret.write_text("s3cret\n")
    for path in (pem, secret):
        path.chmod(0o600)
    return tmp_path


def example_config(directory: Path, **replace: str) -> Path:
    """The shipped example, pointed at credentials in ``directory``, with edits applied."""
    text = (ROOT / "config.example.toml").read_text()
    text = text.replace("/etc/gantryd/app.pem", str(directory / "app.pem"))
    text = text.replace('"/etc/gantryd/webhook-secret"', f'"{directory / "webhook-secret"}"')
    text = text.replace('state_dir = "/var/lib/gantryd"', f'state_dir = "{directory}"')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = directory / "config.toml"
    path.write_text(text)
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GANTRYD, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_example_config_is_valid(credentials: Path) -> None:
    result = check_config(example_config(credentials))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "default" in result.stdout


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('log_level = "info"', 'log_level = "info"\nlisten_port = 8080', "listen_port"),
        ("max_runners = 10", 'max_runners = "ten"', "scheduler.max_runners"),
        ('retry_delay = "30s"', 'retry_delay = "10x"', "queue.retry_delay"),
        ('memory = "2GiB"', 'memory = "2 gigs"', "memory"),
        ('labels = ["self-hosted", "linux", "x64"]', "labels = []", "labels"),
        ("min_idle = 0", "min_idle = 9", "min_idle"),
        ('webhook_secret_file = "', 'webhook_secret_file = "/nonexistent/', "webhook_secret"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "bad-duration",
        "bad-size",
        "empty-labels",
        "min-idle-above-max",
        "missing-credentials",
    ],
)
def test_invalid_config_exits_78_naming_file_and_key(
    credentials: Path, old: str, new: str, key: str
) -> None:
    path = example_config(credentials, **{old: new})
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert str(path) in result.stderr and key in result.stderr
    assert "Traceback" not in result.stderr


def org_pools_config(credentials: Path, api_url: str) -> Path:
    """The example with its pool at organization scope in group "ci" and a second pool in a
    group octo-org does not have."""
    path = example_config(
        credentials,
        **{
            'api_url = "https://api.github.com"': f'api_url = "{api_url}"',
            'app_id = "123456"': f'app_id = "{CLI_APP_ID}"',
            "organizations = []": 'organizations = ["octo-org"]',
            'scope = "repository"': 'scope = "organization"\nrunner_group = "ci"',
        },
    )
    gpu = {"name": '"gpu"', "labels": '["self-hosted", "gpu"]', "scope": '"organization"'}
    lines = [f"{key} = {value}" for key, value in gpu.items()] + ['runner_group = "GPU"']
    path.write_text(path.read_text() + "\n[[pool]]\n" + "\n".join(lines) + "\n")
    return path


CLI_APP_ID = 5151


async def test_check_config_asks_github_about_each_pools_runner_group(
    credentials: Path, nursery: trio.Nursery
) -> None:
    key = serialization.load_pem_private_key((credentials / "app.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    emulator = Emulator(
        app_id=CLI_APP_ID,
        app_public_key=key.public_key(),
        installations={1: ["octo-org/app", "octo-org/web"]},
        public_repositories=["octo-org/web"],
    )
    api_url = await nursery.start(serve_emulator, emulator)
    emulator.add_runner_group("octo-org", "ci", allows_public_repositories=True)
    result = await trio.run_process(
        [*GANTRYD, "check-config", "--config", str(org_pools_config(credentials, api_url))],
        capture_stdout=True,
        capture_stderr=True,
        cwd=ROOT,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert f"runner groups (asked {api_url}):" in out
    assert (
        'pool "default": runner group "ci" of octo-org (visibility all, '
        "allows_public_repositories true) serves every repository of octo-org gantryd reaches"
    ) in out
    assert (
        'pool "gpu": organization octo-org has no runner group "GPU" (it has: Default, ci)' in out
    )
    # The admin limits "ci" to private repositories: the public one is named with the reason.
    (ci,) = [g for g in emulator.runner_groups("octo-org") if g.name == "ci"]
    emulator.set_runner_group_policy("octo-org", ci.id, visibility="private")
    again = await trio.run_process(
        [*GANTRYD, "check-config", "--config", str(org_pools_config(credentials, api_url))],
        capture_stdout=True,
        capture_stderr=True,
        cwd=ROOT,
    )
    assert 'never serves octo-org/web (runner group "ci" of octo-org is limited to private' in (
        again.stdout.decode()
    )


def test_check_config_offline_says_runner_groups_were_not_checked(credentials: Path) -> None:
    """Unreachable GitHub: nothing claimed about the groups. What the file alone shows is still
    said: two pools of different groups with the same labels (routing cannot tell them apart)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    path = org_pools_config(credentials, f"http://127.0.0.1:{port}")  # nothing listens
    text = path.read_text().replace('["self-hosted", "gpu"]', '["self-hosted", "linux", "x64"]')
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert f"runner groups not checked: GitHub at http://127.0.0.1:{port} is unreachable" in (
        result.stdout
    )
    assert "runner groups (asked" not in result.stdout
    assert (
        'warning: pool "gpu" (runner group "GPU") has the labels of pool "default" (runner '
        'group "ci")'
    ) in result.stderr


def test_missing_file_exits_78(tmp_path: Path) -> None:
    result = check_config(tmp_path / "nope.toml")
    assert result.returncode == EX_CONFIG and "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


@dataclass
class Served:
    child: subprocess.Popen[str]
    config: Path
    url: str
    notify: socket.socket  # what the daemon tells "systemd"

    def next_status(self) -> str:
        """Notifications up to the next READY=1 (after a reload), joined."""
        seen = []
        while True:
            message = self.notify.recv(4096).decode()
            seen.append(message)
            if "READY=1" in message:
                return "\n".join(seen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(credentials: Path) -> Iterator[Served]:
    """`gantryd serve` as a child process, with a notify socket standing in for systemd's."""
    port = _free_port()
    config = example_config(
        credentials,
        **{
            'listen = "0.0.0.0:8080"': f'listen = "127.0.0.1:{port}"',
            'metrics_listen = "127.0.0.1:9464"': f'metrics_listen = "127.0.0.1:{_free_port()}"',
            'memory = "2GiB"': 'memory = "256MiB"',
            'runtime_dir = "/run/gantryd"': f'runtime_dir = "{credentials / "run"}"',
        },
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(credentials / "notify.sock"))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(credentials / "notify.sock")}
    child = subprocess.Popen(
        [*GANTRYD, "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        message = notify.recv(4096).decode()
        assert "READY=1" in message, message
        yield Served(child, config, f"http://127.0.0.1:{port}", notify)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        notify.close()


def test_sighup_with_broken_file_keeps_serving_and_sigterm_exits_cleanly(
    served: Served,
) -> None:
    child, config = served.child, served.config
    good = config.read_text()
    config.write_text(good.replace("max_runners = 10", "max_runners = -1"))
    child.send_signal(signal.SIGHUP)
    status = served.next_status()
    assert "RELOADING=1" in status and "reload failed" in status
    assert httpx.get(served.url + "/healthz", timeout=10).status_code == 200
    config.write_text(good.replace('log_level = "info"', 'log_level = "debug"'))
    child.send_signal(signal.SIGHUP)
    assert "STATUS=reloaded" in served.next_status()
    child.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in served.notify.recv(4096).decode()
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    assert "reload failed, keeping the running configuration" in stderr
    assert "scheduler.max_runners" in stderr
    assert "Traceback" not in stderr


def test_check_config_says_what_a_host_network_job_reaches(credentials: Path) -> None:
    """Issue 13 §11: ``network = "host"`` passed without a word."""
    result = check_config(
        example_config(credentials, **{'network = "default"': 'network = "host"'})
    )
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if ".network" in x]
    assert line.startswith('warning: pool "default".network')
    assert "intake" in line and "/metrics" in line and "loopback" in line
    assert "admin socket is a unix socket" in line


def test_check_config_compares_nofile_with_the_docker_engines_own_limit(
    credentials: Path,
) -> None:
    """Issue 13 §11: a nofile above dockerd's hard limit (read from /proc/<dockerd>/limits)
    fails every container of the pool; check-config must say so."""
    from agent.container.engine_limits import engine_nofile_limit

    limit = engine_nofile_limit()
    if isinstance(limit, str) or limit.hard is None:
        pytest.skip(f"dockerd's limit is not readable here: {limit}")
    above = example_config(credentials, **{"nofile = 65536": f"nofile = {limit.hard + 1}"})
    result = check_config(above)
    assert result.returncode == 0, result.stderr
    warnings = [x for x in result.stderr.splitlines() if ".nofile" in x]
    assert len(warnings) == 1 and f"limit ({limit.hard}," in warnings[0]
    assert f"at most {limit.hard}" in warnings[0]
    within = check_config(example_config(credentials, **{"nofile = 65536": "nofile = 1024"}))
    assert ".nofile" not in within.stderr


def test_engine_limit_unreadable_is_a_note(tmp_path: Path) -> None:
    from agent.container.engine_limits import EngineLimit, engine_nofile_limit, nofile_warnings

    assert "no dockerd" in str(engine_nofile_limit(tmp_path, tmp_path / "docker.pid"))
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "comm").write_text("dockerd\n")
    (tmp_path / "77" / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max open files            1024                 unlimited            files     \n"
    )
    limit = engine_nofile_limit(tmp_path, tmp_path / "docker.pid")
    assert limit == EngineLimit(hard=None, source=tmp_path / "77" / "limits")
    assert nofile_warnings({"default": 10**6}, limit) == []


def test_check_config_says_plainly_when_the_engine_cannot_run_a_privileged_sidecar(
    credentials: Path,
) -> None:
    """Issue 14: a pool whose sidecar needs --privileged on an Engine that cannot grant it
    (dockerd's bounding set lacks a capability) is named; other pools are not."""
    from agent.container.engine_limits import engine_missing_capabilities

    missing = engine_missing_capabilities()
    if isinstance(missing, str):
        pytest.skip(f"dockerd's capabilities are not readable here: {missing}")
    dind = 'docker = "dind"\nallow_privileged_sidecar = true'
    result = check_config(example_config(credentials, **{'docker = "none"': dind}))
    assert result.returncode == 0, result.stderr
    assert "PRIVILEGED sidecar" in result.stdout
    warned = [x for x in result.stderr.splitlines() if "privileged containers" in x]
    if missing:
        assert len(warned) == 1 and warned[0].startswith('warning: pool "default"')
        assert f"CAP_{missing[0]}" in warned[0] and "docker_privileged = false" in warned[0]
    else:
        assert warned == []
    unprivileged = dind + "\ndocker_privileged = false"
    result = check_config(example_config(credentials, **{'docker = "none"': unprivileged}))
    assert "privileged containers" not in result.stderr


def test_engine_capabilities_from_proc(tmp_path: Path) -> None:
    from agent.container.engine_limits import engine_missing_capabilities, privileged_warnings

    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/cap_last_cap").write_text("40\n")
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "comm").write_text("dockerd\n")
    (tmp_path / "77" / "status").write_text("Name:\tdockerd\nCapBnd:\t000001fffeffffff\n")
    missing = engine_missing_capabilities(tmp_path, tmp_path / "docker.pid")
    assert missing == ["SYS_RESOURCE"]
    (tmp_path / "77" / "status").write_text("CapBnd:\t000001ffffffffff\n")
    assert engine_missing_capabilities(tmp_path, tmp_path / "docker.pid") == []
    assert privileged_warnings(["gpu"], []) == []
    assert "no dockerd" in str(engine_missing_capabilities(tmp_path / "x", tmp_path / "y"))
