"""Payload parsing, label routing and priority rules."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    Config,
    GitHubConfig,
    PoolConfig,
    PriorityRule,
    QueueConfig,
    SchedulerConfig,
    Scope,
    ServerConfig,
)
from agent.orchestrator.job_parser import (
    Action,
    PayloadError,
    group_label_warnings,
    job_spec,
    match_pool,
    parse_workflow_job,
)

PAYLOAD: dict[str, Any] = {
    "action": "queued",
    "workflow_job": {
        "id": 12877621891,
        "run_id": 4747967848,
        "run_attempt": 1,
        "workflow_name": "CI",
        "head_branch": "main",
        "head_sha": "16c5286e8d9a0629956a28938386b36608707a71",
        "html_url": "https://github.com/o/r/actions/runs/1/jobs/2",
        "status": "queued",
        "conclusion": None,
        "name": "test",
        "labels": ["self-hosted", "Linux"],
        "runner_id": None,
        "runner_name": None,
    },
    "repository": {"full_name": "octo/app", "name": "app"},
    "organization": {"login": "octo"},
    "installation": {"id": 42},
    "sender": {"login": "someone"},
}

POOLS = (
    PoolConfig(name="default", labels=("self-hosted", "linux", "x64")),
    PoolConfig(name="big", labels=("self-hosted", "linux", "x64", "big"), priority=5),
    PoolConfig(name="also-default", labels=("self-hosted", "linux", "x64")),
)


def make_config(priorities: tuple[PriorityRule, ...] = ()) -> Config:
    return Config(
        path=Path("/etc/gantryd/config.toml"),
        server=ServerConfig(),
        github=GitHubConfig(),
        queue=QueueConfig(),
        scheduler=SchedulerConfig(),
        pools=POOLS,
        priorities=priorities,
    )


def test_parses_the_fields_gantryd_uses() -> None:
    event = parse_workflow_job(PAYLOAD)
    assert event.action is Action.QUEUED
    assert event.job_id == 12877621891  # int64, beyond 2**31
    assert event.repository == "octo/app"
    assert event.organization == "octo"
    assert event.installation_id == 42
    assert event.labels == ("self-hosted", "Linux")
    assert event.runner_name is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("workflow_job.id", "workflow_job.id is missing"),
        ("repository.full_name", "repository.full_name is missing"),
        ("workflow_job.labels", "workflow_job.labels is missing"),
        ("action", "action is missing"),
    ],
)
def test_missing_field_is_named(path: str, message: str) -> None:
    payload = copy.deepcopy(PAYLOAD)
    node = payload
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    with pytest.raises(PayloadError, match=message):
        parse_workflow_job(payload)


def test_wrong_type_is_named() -> None:
    payload = copy.deepcopy(PAYLOAD)
    payload["workflow_job"]["id"] = "12"
    with pytest.raises(PayloadError, match=r"workflow_job\.id must be an integer"):
        parse_workflow_job(payload)


def test_label_match_is_case_insensitive_superset() -> None:
    assert match_pool(("SELF-HOSTED", "linux"), POOLS) is POOLS[0]
    assert match_pool(("self-hosted", "gpu"), POOLS) is None
    assert match_pool(("ubuntu-latest",), POOLS) is None


def test_closest_fitting_pool_wins_then_file_order() -> None:
    assert match_pool(("self-hosted", "big"), POOLS) is POOLS[1]
    assert match_pool(("self-hosted", "x64"), POOLS) is POOLS[0]  # not "big", not the later tie


def test_priority_first_matching_rule_else_pool_default() -> None:
    rules = (
        PriorityRule(priority=100, repository="octo/*", branch="release/*"),
        PriorityRule(priority=50, organization="octo", labels=("LINUX",)),
        PriorityRule(priority=1),
    )
    spec = job_spec(parse_workflow_job(PAYLOAD), make_config(rules))
    assert spec is not None and spec.priority == 50
    payload = copy.deepcopy(PAYLOAD)
    payload["workflow_job"]["head_branch"] = "release/1.0"
    spec = job_spec(parse_workflow_job(payload), make_config(rules))
    assert spec is not None and spec.priority == 100
    payload["workflow_job"]["labels"] = ["self-hosted", "big"]
    spec = job_spec(parse_workflow_job(payload), make_config())
    assert spec is not None and (spec.pool, spec.priority) == ("big", 5)


def test_unmatched_job_gives_no_spec() -> None:
    payload = copy.deepcopy(PAYLOAD)
    payload["workflow_job"]["labels"] = ["ubuntu-latest"]
    assert job_spec(parse_workflow_job(payload), make_config()) is None


GROUPED = (
    PoolConfig(name="repo", labels=("self-hosted", "linux")),
    PoolConfig(
        name="gpu",
        labels=("self-hosted", "linux", "gpu"),
        scope=Scope.ORGANIZATION,
        runner_group="GPU runners",
    ),
)


def test_routing_reads_the_labels_only_never_a_runner_group() -> None:
    """runs-on: {group: X, labels: [...]} arrives as its labels alone; runner_group_name is
    null while queued (and names the runner's group once one has the job, too late to route)."""
    payload = copy.deepcopy(PAYLOAD)
    config = replace(make_config(), pools=GROUPED)
    payload["workflow_job"]["labels"] = ["self-hosted", "gpu"]
    spec = job_spec(parse_workflow_job(payload), config)
    assert spec is not None and spec.pool == "gpu"
    payload["workflow_job"]["labels"] = ["self-hosted", "linux"]
    payload["workflow_job"]["runner_group_name"] = "GPU runners"  # as on in_progress
    spec = job_spec(parse_workflow_job(payload), config)
    assert spec is not None and spec.pool == "repo"


def test_a_job_without_labels_is_never_served() -> None:
    """runs-on: {group: X} alone: nothing in the payload says where it may run."""
    payload = copy.deepcopy(PAYLOAD)
    payload["workflow_job"]["labels"] = []
    assert job_spec(parse_workflow_job(payload), replace(make_config(), pools=GROUPED)) is None
    assert match_pool((), GROUPED) is None


def test_pools_of_two_groups_with_the_same_labels_are_warned_of() -> None:
    linux = ("self-hosted", "linux")
    ci = PoolConfig(name="ci", labels=linux, scope=Scope.ORGANIZATION, runner_group="ci")
    (warning,) = group_label_warnings(
        (
            PoolConfig(name="repo", labels=linux),
            replace(ci, labels=("Self-Hosted", "LINUX")),
            replace(ci, name="more", labels=(*linux, "big")),  # a label of its own: reachable
        )
    )
    assert warning.startswith('pool "ci" (runner group "ci") has the labels of pool "repo"')
    same_group = (ci, replace(ci, name="ci2"))  # one group: either runner may take the job
    assert group_label_warnings(same_group) == []
