"""The experimental .rpm: it builds from the same tree and declares its files and needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.packaging_support import build

pytestmark = pytest.mark.packaging


def rpm_query(option: str, package: Path) -> list[str]:
    done = subprocess.run(
        ["rpm", option, str(package)], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.splitlines()


def test_rpm_builds_with_files_config_and_requirements(tmp_path: Path) -> None:
    package = build("build-rpm.sh", tmp_path)
    assert package.name.endswith(".experimental.x86_64.rpm"), package

    files = set(rpm_query("-qpl", package))
    assert {
        "/opt/gantryd/bin/gantryd",
        "/opt/gantryd/pyvenv.cfg",
        "/usr/bin/gantryd",
        "/usr/lib/systemd/system/gantryd.service",
        "/usr/lib/sysusers.d/gantryd.conf",
        "/etc/gantryd/config.toml",
    } <= files
    assert not [f for f in files if "__pycache__" in f], "bytecode is made at install time"
    assert rpm_query("-qpc", package) == ["/etc/gantryd/config.toml"]

    requires = rpm_query("-qpR", package)
    assert "/usr/bin/python3.11" in requires
    assert "(docker-ce or moby-engine or docker)" in requires
