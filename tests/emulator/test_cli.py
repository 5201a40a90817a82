"""``python -m agent.emulator`` (agent/emulator/cli.py) as a real process."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import trio

COMMAND = [sys.executable, "-m", "agent.emulator"]


async def test_serves_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    key = tmp_path / "app.pem"
    process = await trio.lowlevel.open_process(
        [*COMMAND, "--generate-app-key", str(key), "--installation", "acme/app=7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                output += await process.stdout.receive_some()
        match = re.search(rb"at (http://127\.0\.0\.1:\d+)", output)
        assert match, output
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in key.read_bytes()
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"{match.group(1).decode()}/repos/acme/app/installation")
        assert response.status_code == 401  # a JWT is required
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    cases = [
        (["--app-public-key", str(missing)], "--app-public-key"),
        (["--generate-app-key", str(tmp_path / "k"), "--installation", "acme"], "OWNER/REPO=ID"),
        (
            [
                "--generate-app-key",
                str(tmp_path / "k2"),
                "--installation",
                "a/x=1",
                "--installation",
                "b/y=1",
            ],
            "one owner",
        ),
        (
            [
                "--generate-app-key",
                str(tmp_path / "k3"),
                "--installation",
                "a/x=1",
                "--public-repository",
                "a/y",
            ],
            "not in any installation",
        ),
        (
            [
                "--generate-app-key",
                str(tmp_path / "k4"),
                "--installation",
                "a/x=1",
                "--min-runner-version",
                "2.x",
            ],
            "--min-runner-version",
        ),
        (
            [
                "--generate-app-key",
                str(tmp_path / "k5"),
                "--installation",
                "a/x=1",
                "--runner-idle-timeout",
                "0",
            ],
            "--runner-idle-timeout",
        ),
    ]
    for args, expected in cases:
        result = await trio.run_process(
            [*COMMAND, *args], capture_stdout=True, capture_stderr=True, check=False
        )
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr.decode()
        assert b"Traceback" not in result.stderr
