"""agent/reload.py: whole-file validation, the old config kept on error, log level applied live,
restart-only keys reported until they are back to the started values."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import Config, ConfigError, load_config
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
    assert "server.listen changed; restart gantryd to apply" in caplog.text


def test_restart_keys_stay_pending_until_the_file_is_back_to_the_started_values(
    credentials: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = example_config(credentials)
    good = path.read_text()
    live = LiveConfig(load_config(path))
    assert live.restart_pending == ()

    path.write_text(
        good.replace('instance = ""', 'instance = "elsewhere"').replace(
            'api_url = "https://api.github.com"', 'api_url = "https://ghes.example/api/v3"'
        )
    )
    with caplog.at_level(logging.WARNING, logger="agent.reload"):
        assert live.reload().ok
    assert tuple(live.restart_pending) == ("server.instance", "github.api_url")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "reload: server.instance, github.api_url changed; restart gantryd to apply"
    ]

    # A reload that changes a live key keeps what is still pending, relative to the start.
    path.write_text(
        good.replace('instance = ""', 'instance = "elsewhere"').replace(
            "max_runners = 10", "max_runners = 12"
        )
    )
    caplog.clear()
    result = live.reload()
    assert result.ok and result.needs_restart == ("server.instance",)
    assert tuple(live.restart_pending) == ("server.instance",)
    assert live.current.scheduler.max_runners == 12
    assert "server.instance changed; restart gantryd to apply" in caplog.text

    # A file that fails validation changes nothing, pending keys included.
    path.write_text(good.replace("max_runners = 10", "max_runners = -1"))
    assert not live.reload().ok
    assert tuple(live.restart_pending) == ("server.instance",)

    path.write_text(good)
    caplog.clear()
    assert live.reload().ok
    assert live.restart_pending == ()
    assert "restart gantryd" not in caplog.text


def test_a_refused_prepare_step_keeps_the_old_configuration(credentials: Path) -> None:  # noqa: F811
    path = example_config(credentials)
    good = path.read_text()
    live = LiveConfig(load_config(path))
    applied: list[Config] = []

    def prepare(new: Config) -> Callable[[], None]:
        if new.scheduler.max_runners == 13:
            raise ConfigError(new.path, "github.private_key_file", "cannot load the key")
        return lambda: applied.append(new)

    path.write_text(good.replace("max_runners = 10", "max_runners = 13"))
    result = live.reload(prepare)
    assert not result.ok and "github.private_key_file: cannot load the key" in (result.error or "")
    assert live.current.scheduler.max_runners == 10 and not live.last_reload_ok
    assert applied == []

    path.write_text(good.replace("max_runners = 10", "max_runners = 14"))
    assert live.reload(prepare).ok
    assert [config.scheduler.max_runners for config in applied] == [14]
    assert live.current is applied[0]
