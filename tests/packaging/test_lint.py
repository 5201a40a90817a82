"""lintian on the .deb: no errors and no warnings beyond the overrides packaging/ documents."""

from __future__ import annotations

import subprocess

import pytest

from tests.packaging.packaging_support import Debs

pytestmark = pytest.mark.packaging


def test_lintian_reports_no_errors_or_warnings(debs: Debs) -> None:
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", str(debs.first)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert (done.returncode, tags) == (0, []), done.stdout + done.stderr
