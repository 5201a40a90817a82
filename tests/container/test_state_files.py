"""gantryd's state is private whatever umask starts it (issue 13 §11: outside systemd the state
dir was 0755 and its databases 0644)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import docker
import pytest
import trio

from tests.conftest import remove_managed
from tests.container.stack import ServeProcess, emulator_setup

pytestmark = pytest.mark.docker


async def test_state_dir_is_0700_and_its_files_0600_under_umask_022(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    async with emulator_setup(tmp_path) as setup:
        state = tmp_path / "state"  # made by gantryd itself
        text = setup.config_path.read_text()
        setup.config_path.write_text(
            text.replace(f'state_dir = "{tmp_path}"', f'state_dir = "{state}"')
            .replace('"app.pem"', f'"{tmp_path / "app.pem"}"')
            .replace('"webhook-secret"', f'"{tmp_path / "webhook-secret"}"')
        )
        serve = ServeProcess(setup.config_path, tmp_path)
        old = os.umask(0o022)  # the child inherits it, as from a shell
        try:
            await serve.start()
        finally:
            os.umask(old)
        try:
            with trio.fail_after(30):
                await serve.wait_ready()
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
            files = [p for p in state.iterdir() if p.is_file()]
            assert any(p.suffix == ".db" for p in files)
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
                p.name: 0o600 for p in files
            }
        finally:
            await serve.aclose()
            remove_managed(docker_client, setup.instance)
