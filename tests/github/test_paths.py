"""REST paths from outside names: validated to GitHub's rules, quoted, never a path traversal."""

from __future__ import annotations

import pytest

from agent.emulator import Emulator
from agent.github.client import GitHubClient, RunnerTarget
from agent.github.paths import InvalidName, check_full_name, org_path, repo_path, segment


@pytest.mark.parametrize(
    "name", ["acme/app", "Octo-Org/my.repo_1", "a/b", "octocat_acme/x", "x" * 39 + "/" + "y" * 100]
)
def test_names_github_gives_are_accepted(name: str) -> None:
    assert check_full_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../../../orgs/evil",
        "acme/..",
        "acme/.",
        "acme",
        "acme/app/extra",
        "-acme/app",
        "acme/app?x=1",
        "acme/app%2F..",
        "/app",
        "acme/",
        "x" * 40 + "/app",
        "acme/" + "y" * 101,
        "ac me/app",
    ],
)
def test_other_names_are_refused_before_a_path_exists(name: str) -> None:
    with pytest.raises(InvalidName, match="not a valid GitHub"):
        repo_path(name)


def test_every_other_part_is_one_quoted_segment() -> None:
    assert repo_path("acme/app", "commits", "refs/heads/../x", "check-runs") == (
        "/repos/acme/app/commits/refs%2Fheads%2F..%2Fx/check-runs"
    )
    assert org_path("acme", "repos") == "/orgs/acme/repos"
    assert segment(42) == "42"
    with pytest.raises(InvalidName):
        org_path("evil/../../x")


async def test_the_client_makes_no_call_for_an_invalid_name(
    github: GitHubClient, emulator: Emulator
) -> None:
    """The case of issue 13 §7: generate-jitconfig for ``../../../orgs/evil`` never leaves."""
    target = RunnerTarget(repository="acme/../../../orgs/evil")
    with pytest.raises(InvalidName):
        await github.generate_jitconfig(
            target, name="r", labels=("x",), runner_group_id=1, installation_id=None
        )
