"""agent/reload.py: whole-file validation, the old config kept on error, log level applied live."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.reload import LiveConfig
from tests.test_cli import credentials, example_config  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def keep_root_level() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def test_a_reload_storm_ends_on_the_last_valid_file(credentials: Path) -> None:  # noqa: F811
    path = example_config(credentials)
    good = path.read_text()
    live = LiveConfig(load_config(path))
    for i in range(1, 41):
        if i % 2:
            path.write_text(good.replace("max_runners = 10", "max_runners = -1"))
            result = live.reload()
            assert not result.ok and "scheduler.max_runners" in (result.error or "")
            assert not live.last_reload_ok
            assert live.current.scheduler.max_runners == (10 if i == 1 else i - 1)
        else:
            path.write_text(good.replace("max_runners = 10", f"max_runners = {i}"))
            assert live.reload().ok and live.last_reload_ok
            assert live.current.scheduler.max_runners == i
    assert live.current.scheduler.max_runners == 40


def test_log_level_applies_at_once_and_restart_keys_are_named(
    credentials: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = example_config(credentials)
    good = path.read_text()
    live = LiveConfig(load_config(path))
    logging.getLogger().setLevel(logging.INFO)
    path.write_text(
        good.replace('log_level = "info"', 'log_level = "debug"').replace(
            'listen = "0.0.0.0:8080"', 'listen = "0.0.0.0:8081"'
        )
    )
    result = live.reload()
    assert result.ok and "server.listen" in result.needs_restart
    assert logging.getLogger().level == logging.DEBUG
    assert "server.listen changed but only takes effect after a restart" in caplog.text
