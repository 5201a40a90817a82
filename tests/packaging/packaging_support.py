"""Building the packages for the packaging tests (shared by test_deb.py and test_rpm.py)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(script: str, dist: Path, version: str | None = None) -> Path:
    """Run packaging/<script> into ``dist``; returns the package it printed."""
    env = dict(os.environ, GANTRYD_DIST=str(dist))
    if version is not None:
        env["GANTRYD_VERSION"] = version
    done = subprocess.run(
        ["bash", str(ROOT / "packaging" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stderr}"
    return Path(done.stdout.strip().splitlines()[-1])


def upstream_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


@dataclass(frozen=True)
class Debs:
    first: Path
    newer: Path  # same tree, higher version: what an upgrade installs
