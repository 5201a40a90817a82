"""``gantryd serve`` that cannot start: one clear line on stderr, no traceback, and the exit
status systemd acts on (78 = EX_CONFIG: do not restart; 1: a restart may help).
Covers agent/startup.py and its use in agent/daemon.py and agent/cli.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.test_cli import GANTRYD, ROOT, credentials, example_config  # noqa: F401 - fixture

EX_CONFIG = 78
# Root without the capabilities that bypass file modes: as gantryd's own user would be.
NO_DAC_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def config_with_state(directory: Path, state_dir: Path) -> Path:
    """The example config with its state in ``state_dir``; GitHub is a closed loopback port, so
    nothing could leave this host even if gantryd got further than it should."""
    return example_config(
        directory,
        **{
            f'state_dir = "{directory}"': f'state_dir = "{state_dir}"',
            'runtime_dir = "/run/gantryd"': f'runtime_dir = "{directory / "run"}"',
            'api_url = "https://api.github.com"': 'api_url = "http://127.0.0.1:9"',
            'listen = "0.0.0.0:8080"': 'listen = "127.0.0.1:0"',
            'metrics_listen = "127.0.0.1:9464"': 'metrics_listen = "127.0.0.1:0"',
        },
    )


def serve(
    config: Path, *, prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "DOCKER_HOST")}
    return subprocess.run(
        [*(prefix or []), *GANTRYD, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environ, **(env or {})},
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gantryd: cannot start: "), lines[0]
    return lines[0]


def test_a_secrets_key_others_can_read_is_a_config_error(credentials: Path) -> None:  # noqa: F811
    state = credentials / "state"
    state.mkdir()
    key = state / "secrets.key"
    key.write_bytes(Fernet.generate_key())
    key.chmod(0o644)
    result = serve(config_with_state(credentials, state))
    line = one_line(result)
    assert result.returncode == EX_CONFIG
    assert str(key) in line and "0644" in line and "chmod 600" in line


@pytest.mark.parametrize("problem", ["unreadable", "a-file"])
def test_an_unusable_state_dir_is_a_config_error(
    credentials: Path,  # noqa: F811
    problem: str,
) -> None:
    state = credentials / "state"
    if problem == "a-file":
        state.write_text("not a directory\n")
    else:
        state.mkdir(mode=0o000)
    result = serve(config_with_state(credentials, state), prefix=NO_DAC_OVERRIDE)
    line = one_line(result)
    assert result.returncode == EX_CONFIG
    assert f"server.state_dir {state}" in line
    expected = "not a directory" if problem == "a-file" else "not readable and writable"
    assert expected in line


def test_docker_not_answering_exits_1_so_systemd_retries(credentials: Path) -> None:  # noqa: F811
    nowhere = f"unix://{credentials / 'no-docker.sock'}"
    result = serve(config_with_state(credentials, credentials), env={"DOCKER_HOST": nowhere})
    line = one_line(result)
    assert result.returncode == 1
    assert f"the Docker Engine does not answer at {nowhere}" in line
