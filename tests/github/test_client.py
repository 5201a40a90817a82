"""GitHubClient's endpoints against the strict emulator: JIT registration, runner groups."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.emulator import Emulator
from agent.github.client import GitHubClient, GitHubError, RunnerTarget

APP = RunnerTarget(repository="acme/app")
LABELS = ("self-hosted", "linux")


async def register(github: GitHubClient, name: str, target: RunnerTarget = APP) -> int:
    jit = await github.generate_jitconfig(
        target, name=name, labels=LABELS, runner_group_id=1, installation_id=None
    )
    return jit.runner_id


async def test_client_id_as_issuer(app_client: Callable[..., GitHubClient]) -> None:
    """§5.1: iss may be the client ID (recommended) or the App ID."""
    async with app_client(issuer="Iv1.b507a08c87ecfe98") as github:
        assert await register(github, "by-client-id") > 0


async def test_org_runner_group_looked_up_by_name(github: GitHubClient, emulator: Emulator) -> None:
    group = emulator.add_runner_group("acme", "builders")
    org = RunnerTarget(organization="acme")
    assert await github.runner_group_id(org, "Builders", installation_id=None) == group.id
    assert await github.runner_group_id(org, "Default", installation_id=None) == 1
    assert await github.runner_group_id(APP, "anything", installation_id=None) == 1
    with pytest.raises(GitHubError, match=r'no runner group "gpu" \(it has: Default, builders\)'):
        await github.runner_group_id(org, "gpu", installation_id=None)
    jit = await github.generate_jitconfig(
        org, name="org-runner", labels=LABELS, runner_group_id=group.id, installation_id=None
    )
    assert emulator.runner(emulator.scope_for(org="acme"), jit.runner_id).runner_group is group
