"""Packaging tests: the .deb and .rpm built by packaging/, installed as a user would.

They need root, a Docker Engine, debootstrap, lintian and rpmbuild: in CI (CI=true) a missing
one is a failure; elsewhere the tests are skipped with the reason. They take a few minutes, so
GANTRYD_SKIP_PACKAGING=1 skips them on a developer machine; it is ignored in CI.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.packaging.packaging_support import Debs, build, upstream_version

TOOLS = ("docker", "debootstrap", "dpkg-deb", "lintian", "rpmbuild", "objdump", "strip")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds and installs the .deb/.rpm (tests/packaging, minutes)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("CI") == "true":
        return  # CI runs them whatever is missing: a missing tool is a failure there
    reason = ""
    if os.environ.get("GANTRYD_SKIP_PACKAGING") == "1":
        reason = "GANTRYD_SKIP_PACKAGING=1"
    elif os.geteuid() != 0:
        reason = "packaging tests run as root (the venv is built in a mount namespace)"
    elif missing := [tool for tool in TOOLS if shutil.which(tool) is None]:
        reason = f"missing tools: {', '.join(missing)} (see docs/packaging.md)"
    if reason:
        for item in items:
            if item.get_closest_marker("packaging") is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    dist = tmp_path_factory.mktemp("dist")
    first = build("build-deb.sh", dist)
    newer = build("build-deb.sh", dist, version=f"{upstream_version()}+test1")
    return Debs(first, newer)
