"""Fixtures: a directory of credentials files standing in for /etc/gantryd, and the example."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, load_config
from tests.config.files import PEM, example


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A stand-in for /etc/gantryd holding the credentials files, mode 0600."""
    for name, text in (("app.pem", PEM), ("webhook-secret", "s3cret\n"), ("token", "ghp_x\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    return tmp_path


@pytest.fixture
def config(etc: Path) -> Config:
    """The shipped example, loaded."""
    return load_config(example(etc))
