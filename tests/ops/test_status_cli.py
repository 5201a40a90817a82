"""``gantryd status`` while config.toml is invalid (issue 13 §10: it said "daemon is not
running", right after a failed reload, when the operator needs it most)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker
import pytest
import trio

from tests.conftest import remove_managed
from tests.container.stack import pool_stack

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


async def status(config: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "agent", "status", "--config", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "breakage",
    [("max_runners = 4", 'max_runners = "four"'), ("[scheduler]", "[scheduler")],
    ids=["invalid-value", "toml-syntax-error"],
)
async def test_status_finds_the_running_daemon_through_an_invalid_file(
    tmp_path: Path, docker_client: docker.DockerClient, breakage: tuple[str, str]
) -> None:
    async with pool_stack(tmp_path) as stack:
        try:
            config = stack.setup.config_path
            assert (tmp_path / "run" / "admin.sock").exists()  # not the default /run/gantryd
            with trio.fail_after(60):
                healthy = await status(config)
                assert healthy.returncode == 0, healthy.stderr
                text = config.read_text()
                assert breakage[0] in text
                config.write_text(text.replace(breakage[0], breakage[1]))
                broken = await status(config)
            assert broken.returncode == 0, broken.stderr
            assert b"not running" not in broken.stderr
            assert stack.setup.instance.encode() in broken.stdout
        finally:
            remove_managed(docker_client, stack.setup.instance)
