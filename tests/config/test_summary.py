"""agent/config/summary.py: check-config's summary; no password shown."""

from __future__ import annotations

import dataclasses

from agent.config import Config, describe


def test_describe(config: Config) -> None:
    text = describe(config)
    assert "0.0.0.0:8080/webhook" in text
    assert "127.0.0.1:9464" in text
    assert "GitHub App 123456" in text
    assert "sqlite /var/lib/gantryd/queue.db" in text
    assert 'pool "default"  labels self-hosted, linux, x64' in text
    assert "ghcr.io/actions/actions-runner:latest" in text
    assert "2GiB memory" in text


def test_describe_hides_redis_password(config: Config) -> None:
    queue = dataclasses.replace(
        config.queue, backend="redis", redis_url="redis://:hunter2@h:6379/0"
    )
    text = describe(dataclasses.replace(config, queue=queue))
    assert "hunter2" not in text
    assert "redis://:***@h:6379/0" in text
