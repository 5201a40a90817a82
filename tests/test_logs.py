"""agent/logs.py: text, JSON, and journald priority prefixes under JOURNAL_STREAM."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from agent.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit(capsys: pytest.CaptureFixture[str]) -> list[str]:
    log = logging.getLogger("agent.container.pool_manager")
    log.debug("hidden at info")
    log.info("runner started runner=%s pool=%s", "gantryd-h-1", "default")
    log.error("docker gone")
    return capsys.readouterr().err.splitlines()


def test_journald_gets_priorities_and_no_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text", {"JOURNAL_STREAM": "8:1234"})
    assert _emit(capsys) == [
        "<6>agent.container.pool_manager: runner started runner=gantryd-h-1 pool=default",
        "<3>agent.container.pool_manager: docker gone",
    ]


def test_text_lines_carry_time_level_and_key_values(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text", {})
    lines = _emit(capsys)
    assert len(lines) == 2
    assert lines[0].endswith(
        "INFO agent.container.pool_manager: runner started runner=gantryd-h-1 pool=default"
    )
    assert lines[0][:4].isdigit()  # a timestamp first when not under journald


def test_json_lines_parse(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "json", {"JOURNAL_STREAM": "8:1234"})
    records = [json.loads(line) for line in _emit(capsys)]
    assert [r["level"] for r in records] == ["debug", "info", "error"]
    assert records[1]["message"] == "runner started runner=gantryd-h-1 pool=default"
    assert records[1]["logger"] == "agent.container.pool_manager"
