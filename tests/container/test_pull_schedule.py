"""agent/container/images.py: when a runner start pulls its image first, no Docker."""

from __future__ import annotations

import pytest

from agent.config import PullPolicy
from agent.container.images import moving_tag, pull_due

HOUR = 3600.0


@pytest.mark.parametrize(
    ("image", "moving"),
    [
        ("ghcr.io/actions/actions-runner:latest", True),
        ("ghcr.io/actions/actions-runner", True),
        ("127.0.0.1:5000/runner", True),  # the port is no tag
        ("127.0.0.1:5000/runner:latest", True),
        ("ghcr.io/actions/actions-runner:2.330.0", False),
        ("ghcr.io/actions/actions-runner@sha256:" + "a" * 64, False),
    ],
)
def test_moving_tags(image: str, moving: bool) -> None:
    assert moving_tag(image) is moving


def test_if_not_present_rechecks_a_moving_tag_every_interval() -> None:
    def due(last: float | None, now: float, image: str = "r:latest") -> bool:
        return pull_due(
            PullPolicy.IF_NOT_PRESENT,
            image,
            present=True,
            last_check=last,
            now=now,
            interval=6 * HOUR,
        )

    assert due(None, 0.0)  # never checked by this process
    assert not due(0.0, 6 * HOUR - 1)
    assert due(0.0, 6 * HOUR)
    assert not due(None, 0.0, image="r:2.330.0")  # a fixed tag is pulled once


def test_missing_always_and_never() -> None:
    kw = {"last_check": 0.0, "now": 1.0, "interval": HOUR}
    assert pull_due(PullPolicy.IF_NOT_PRESENT, "r:1", present=False, **kw)
    assert pull_due(PullPolicy.ALWAYS, "r:1", present=True, **kw)
    assert not pull_due(PullPolicy.NEVER, "r:latest", present=False, **kw)
