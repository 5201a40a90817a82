"""Organization runner groups and their repository policy (models.RunnerGroup, state, rest)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, JobStatus
from agent.emulator.errors import GitHubError
from agent.emulator.models import Runner, RunnerScope, job_json

from .conftest import APP_ID, INSTALLATIONS, Clock

ORG = RunnerScope(organization="acme")
LABELS = ["self-hosted", "gantryd"]
GROUPS = "/orgs/acme/actions/runner-groups"


@pytest.fixture
def emulator(app_key: rsa.RSAPrivateKey, clock: Clock) -> Emulator:
    """acme/lib is public; acme/app and other/tool private."""
    return Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations=INSTALLATIONS,
        clock=clock,
        public_repositories=["acme/lib"],
    )


def connected(emulator: Emulator, scope: RunnerScope, name: str, group_id: int = 1) -> Runner:
    runner, _ = emulator.generate_jitconfig(
        scope, {"name": name, "runner_group_id": group_id, "labels": LABELS}
    )
    emulator.open_session(runner.secret)
    return runner


def test_default_group_does_not_serve_public_repositories(emulator: Emulator) -> None:
    runner = connected(emulator, ORG, "org-runner")
    public = emulator.create_job("acme/lib", LABELS, "true")
    assert public.status is JobStatus.QUEUED and runner.job_id is None  # stays queued
    private = emulator.create_job("acme/app", LABELS, "true")
    assert runner.job_id == private.id
    # An admin allows public repositories in the Default group: the next runner takes it.
    emulator.set_runner_group_policy("acme", 1, allows_public_repositories=True)
    other = connected(emulator, ORG, "org-runner-2")
    assert other.job_id == public.id


def test_repository_runner_serves_its_public_repository(emulator: Emulator) -> None:
    runner = connected(emulator, RunnerScope(repository="acme/lib"), "repo-runner")
    job = emulator.create_job("acme/lib", LABELS, "true")
    assert runner.job_id == job.id


def test_selected_group_serves_only_its_repositories(emulator: Emulator) -> None:
    group = emulator.add_runner_group(
        "acme", "deploy", visibility="selected", repositories=["acme/app"]
    )
    runner = connected(emulator, ORG, "deployer", group.id)
    assert emulator.runner_groups("acme", visible_to="app") == [
        emulator.runner_group("acme", 1),
        group,
    ]
    assert emulator.runner_groups("acme", visible_to="lib") == []  # public, nothing allows it
    emulator.set_runner_group_policy("acme", group.id, repositories=[])
    job = emulator.create_job("acme/app", LABELS, "true")
    assert runner.job_id is None and job.status is JobStatus.QUEUED
    emulator.set_runner_group_policy("acme", group.id, repositories=["acme/app"])
    assert runner.job_id == job.id
    assert (job.runner_group_id, job.runner_group_name) == (group.id, "deploy")


def test_private_visibility_and_bad_settings(emulator: Emulator) -> None:
    group = emulator.add_runner_group(
        "acme", "private-only", visibility="private", allows_public_repositories=True
    )
    runner = connected(emulator, ORG, "p", group.id)
    emulator.create_job("acme/lib", LABELS, "true")
    assert runner.job_id is None
    with pytest.raises(ValueError, match="not a repository of"):
        emulator.set_runner_group_policy("acme", group.id, repositories=["other/tool"])
    with pytest.raises(ValueError):
        emulator.set_runner_group_policy("acme", group.id, visibility="everyone")
    with pytest.raises(ValueError, match="not in any installation"):
        Emulator(
            app_id=APP_ID,
            app_public_key=emulator._public_key,
            installations=INSTALLATIONS,
            public_repositories=["acme/nope"],
        )


async def test_rest_lists_groups_and_their_repositories(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    headers = {"Authorization": f"Bearer {token_for(11)}"}
    group = emulator.add_runner_group(
        "acme", "deploy", visibility="selected", repositories=["acme/app"]
    )
    listed = (await http.get(GROUPS, headers=headers)).json()
    assert listed["total_count"] == 2
    default, deploy = listed["runner_groups"]
    assert default == {
        "id": 1,
        "name": "Default",
        "visibility": "all",
        "default": True,
        "runners_url": f"{emulator.base_url}{GROUPS}/1/runners",
        "inherited": False,
        "allows_public_repositories": False,
        "restricted_to_workflows": False,
        "selected_workflows": [],
        "workflow_restrictions_read_only": False,
    }
    assert (deploy["visibility"], deploy["selected_repositories_url"]) == (
        "selected",
        f"{emulator.base_url}{GROUPS}/{group.id}/repositories",
    )
    one = await http.get(f"{GROUPS}/{group.id}", headers=headers)
    assert one.json() == deploy
    assert (await http.get(f"{GROUPS}/99", headers=headers)).status_code == 404
    repos = (await http.get(f"{GROUPS}/{group.id}/repositories", headers=headers)).json()
    assert repos["total_count"] == 1
    assert repos["repositories"][0]["full_name"] == "acme/app"
    visible = await http.get(GROUPS, params={"visible_to_repository": "lib"}, headers=headers)
    assert visible.json() == {"total_count": 0, "runner_groups": []}
    foreign = await http.get("/orgs/other/actions/runner-groups", headers=headers)
    assert foreign.status_code == 403


async def test_control_api_sets_group_policy(http: httpx.AsyncClient, emulator: Emulator) -> None:
    made = await http.post(
        "/_emulator/orgs/acme/runner-groups",
        json={"name": "oss", "allows_public_repositories": True},
    )
    assert made.status_code == 201
    assert (made.json()["name"], made.json()["allows_public_repositories"]) == ("oss", True)
    changed = await http.patch(
        "/_emulator/orgs/acme/runner-groups/1", json={"allows_public_repositories": True}
    )
    assert changed.json()["allows_public_repositories"] is True
    bad = await http.patch("/_emulator/orgs/acme/runner-groups/1", json={"visibility": "x"})
    assert bad.status_code == 422
    assert emulator.runner_group("acme", 1).allows_public_repositories


def test_a_job_naming_a_group_goes_only_to_runners_of_that_group(emulator: Emulator) -> None:
    """runs-on: {group: X, labels: [...]} (GitHub docs, "Choosing the runner for a job": by
    labels, group membership, or both): labels fit is not enough, the group must be X."""
    gpu = emulator.add_runner_group("acme", "GPU")
    other = connected(emulator, ORG, "default-group")
    repo = connected(emulator, RunnerScope(repository="acme/app"), "repo-runner")
    job = emulator.create_job("acme/app", ["self-hosted"], "true", group="gpu")
    assert other.job_id is None and repo.job_id is None and job.status is JobStatus.QUEUED
    mine = connected(emulator, ORG, "gpu-runner", gpu.id)
    assert mine.job_id == job.id
    assert (job.runner_group_id, job.runner_group_name) == (gpu.id, "GPU")


def test_a_group_only_job_carries_no_labels_and_no_group_while_queued(
    emulator: Emulator,
) -> None:
    """What a webhook of runs-on: {group: X} says: empty labels, runner_group_* null
    (octokit workflow-job schema; terraform-aws-github-runner#3643)."""
    emulator.add_runner_group("acme", "GPU")
    job = emulator.create_job("acme/app", [], "true", group="GPU")
    body = job_json(job, emulator.base_url)
    assert (body["labels"], body["runner_group_id"], body["runner_group_name"]) == ([], None, None)
    with pytest.raises(GitHubError) as refused:
        emulator.create_job("acme/app", [], "true")  # runs-on names nothing at all
    assert refused.value.status == 422
