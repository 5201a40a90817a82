"""workflow_job payloads -> typed events, label -> pool routing, and priority rules.

Label matching follows GitHub (docs/github.md §2.1): a job runs on a runner that has all of the
job's labels, compared case-insensitively. When several pools match, the closest fit wins: the pool
with the fewest labels beyond the job's, so a plain ``[self-hosted, linux]`` job lands in the
general pool rather than in the ``gpu`` pool that also covers it; ties go by order in the file.
(Issue 4 words it "the most specific pool wins". Read as "the pool with most labels", a plain
job would take a gpu runner whenever one exists, so this reads it as the most specific *fit*:
specificity is measured against the job, and a pool naming labels the job did not ask for is
less specific a match for it.)
Routing reads the labels alone, because they are all GitHub sends about where a job may run:
for ``runs-on: {group: X, labels: [...]}`` the payload's ``labels`` are the listed labels
(empty when only the group is named) and ``runner_group_name`` is null until a runner has
the job (octokit's workflow-job schema: "null as long as workflow_job[status] is queued";
docs/github.md §2.2). So a job naming a group reaches the pool whose labels fit it, whose
runners are registered in the pool's ``runner_group``; GitHub then assigns it only if that is
the job's group. A job with no labels at all (``runs-on: {group: X}``) names nothing gantryd
can route and is never served (`NO_LABELS`, the webhook answer says why).
Priority: the first matching ``[[priority]]`` rule, else the pool's default; higher is served
first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from agent.config import Config, PoolConfig, PoolSource, PriorityRule, Scope
from agent.github.paths import InvalidName, check_full_name, check_owner
from agent.queue.base import JobSpec


class PayloadError(ValueError):
    """The payload lacks a field GitHub always sends, or it has the wrong type."""

    def __init__(self, field: str, problem: str = "is missing") -> None:
        super().__init__(f"payload field {field} {problem}")
        self.field = field


class Action(enum.StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True, kw_only=True)
class WorkflowJobEvent:
    action: Action
    job_id: int
    run_id: int
    run_attempt: int
    repository: str
    organization: str | None
    installation_id: int | None
    labels: tuple[str, ...]
    name: str
    workflow_name: str
    head_sha: str
    head_branch: str
    html_url: str
    runner_name: str | None
    conclusion: str | None
    status: str | None = None  # workflow_job.status: "waiting" on a job behind an approval

    @property
    def ready(self) -> bool:
        """Whether GitHub would give this job to a runner now: its status is ``queued``.

        A ``queued`` delivery of a job behind an environment's required reviewers carries
        status ``waiting`` (octokit's ``queued.with-deployment``); only the ``queued`` after
        the approval carries ``queued``. A payload without a status is read as ``queued``.
        """
        return self.status in (None, "queued")


def _get(obj: Mapping[str, Any], path: str) -> Any:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise PayloadError(path)
        node = node[part]
    return node


def _int(obj: Mapping[str, Any], path: str) -> int:
    """GitHub's ids and attempt numbers: positive int64 (docs/github.md §2.2: job ids > 2**31)."""
    value = _get(obj, path)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(path, "must be an integer")
    if not 0 < value < 2**63:
        raise PayloadError(path, "must be a positive 64-bit integer")
    return value


def _str(obj: Mapping[str, Any], path: str, *, nullable: bool = False) -> str:
    value = _get(obj, path)
    if value is None and nullable:
        return ""
    if not isinstance(value, str):
        raise PayloadError(path, "must be a string")
    return value


def _optional_str(job: Mapping[str, Any], key: str) -> str | None:
    value = job.get(key)
    return value if isinstance(value, str) and value else None


def parse_workflow_job(payload: Any) -> WorkflowJobEvent:
    """Validate the fields gantryd relies on; raise PayloadError naming the first bad one."""
    if not isinstance(payload, Mapping):
        raise PayloadError("(body)", "must be a JSON object")
    action_text = _str(payload, "action")
    try:
        action = Action(action_text)
    except ValueError:
        raise PayloadError("action", f"has unknown value {action_text!r}") from None
    labels = _get(payload, "workflow_job.labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PayloadError("workflow_job.labels", "must be a list of strings")
    installation = payload.get("installation")
    installation_id = installation.get("id") if isinstance(installation, Mapping) else None
    organization = payload.get("organization")
    login = organization.get("login") if isinstance(organization, Mapping) else None
    repository = _str(payload, "repository.full_name")
    try:  # before any URL is built from them (issue 13 §7)
        check_full_name(repository)
    except InvalidName as exc:
        raise PayloadError("repository.full_name", f"is invalid: {exc}") from None
    try:
        if login is not None:
            check_owner(str(login))
    except InvalidName as exc:
        raise PayloadError("organization.login", f"is invalid: {exc}") from None
    job = _get(payload, "workflow_job")
    return WorkflowJobEvent(
        action=action,
        job_id=_int(payload, "workflow_job.id"),
        run_id=_int(payload, "workflow_job.run_id"),
        run_attempt=_int(payload, "workflow_job.run_attempt"),
        repository=repository,
        organization=login,
        installation_id=installation_id if isinstance(installation_id, int) else None,
        labels=tuple(labels),
        name=_str(payload, "workflow_job.name"),
        workflow_name=_str(payload, "workflow_job.workflow_name", nullable=True),
        head_sha=_str(payload, "workflow_job.head_sha"),
        head_branch=_str(payload, "workflow_job.head_branch", nullable=True),
        html_url=_str(payload, "workflow_job.html_url"),
        runner_name=_optional_str(job, "runner_name"),
        conclusion=_optional_str(job, "conclusion"),
        status=_optional_str(job, "status"),
    )


def parse_rest_job(
    job: Mapping[str, Any], *, repository: str, installation_id: int | None
) -> WorkflowJobEvent:
    """A queued job found through ``GET .../runs/{id}/jobs`` (docs/github.md §4: the same fields as
    the webhook's ``workflow_job``), as if its ``queued`` delivery had arrived."""
    payload = {
        "action": Action.QUEUED.value,
        "workflow_job": job,
        "repository": {"full_name": repository},
        "installation": {"id": installation_id},
    }
    return parse_workflow_job(payload)


NO_LABELS = (
    "runs-on names no labels, only a runner group, and GitHub does not send a queued job's "
    "group (runner_group_name is null until a runner takes it): gantryd routes by labels; "
    "if the job is meant for a gantryd pool, list that pool's labels in runs-on "
    "(runs-on: {group: ..., labels: [...]})"
)


def match_pool(labels: tuple[str, ...], pools: tuple[PoolConfig, ...]) -> PoolConfig | None:
    """The closest-fitting pool whose labels include all the job's labels, or None (always for
    a job without labels: `NO_LABELS`)."""
    wanted = {label.casefold() for label in labels}
    if not wanted:
        return None
    best: PoolConfig | None = None
    best_have: set[str] = set()
    for pool in pools:
        have = {label.casefold() for label in pool.labels}
        if wanted <= have and (best is None or len(have) < len(best_have)):
            best, best_have = pool, have
    return best


def group_label_warnings(pools: tuple[PoolConfig, ...]) -> list[str]:
    """Pools of different runner groups with the same labels: every job fitting them goes to
    the first, since routing cannot see the group a job asks for (module docstring)."""
    warnings = []
    for index, pool in enumerate(pools):
        have = {label.casefold() for label in pool.labels}
        for first in pools[:index]:
            same = {label.casefold() for label in first.labels} == have
            if same and _group_of(first) != _group_of(pool):
                warnings.append(
                    f'pool "{pool.name}" ({_group_of(pool)}) has the labels of pool '
                    f'"{first.name}" ({_group_of(first)}): gantryd routes by labels only (a '
                    "queued job's runs-on group is not sent), so its jobs all go to "
                    f'"{first.name}"; give "{pool.name}" a label of its own'
                )
                break
    return warnings


def _group_of(pool: PoolConfig) -> str:
    if pool.scope is Scope.ORGANIZATION:
        return f'runner group "{pool.runner_group}"'
    return "repository scope"


def _rule_matches(rule: PriorityRule, event: WorkflowJobEvent) -> bool:
    checks = (
        (rule.repository, event.repository),
        (rule.organization, event.repository.split("/", 1)[0]),
        (rule.workflow, event.workflow_name),
        (rule.job, event.name),
        (rule.branch, event.head_branch),
    )
    if any(p is not None and not fnmatchcase(value, p) for p, value in checks):
        return False
    have = {label.casefold() for label in event.labels}
    return all(label.casefold() in have for label in rule.labels)


def priority_for(event: WorkflowJobEvent, pool: PoolConfig, rules: tuple[PriorityRule, ...]) -> int:
    return next((r.priority for r in rules if _rule_matches(r, event)), pool.priority)


def job_spec(event: WorkflowJobEvent, config: Config) -> JobSpec | None:
    """The queue entry for a job gantryd serves, or None when no pool matches its labels.

    A job that fits a ``source = "scale-set"`` pool best is that pool's listener's: GitHub
    routes it to the scale set and still sends its webhooks, which must not serve it again."""
    pool = match_pool(event.labels, config.pools)
    if pool is None or pool.source is not PoolSource.WEBHOOK:
        return None
    return spec_in_pool(event, pool, config)


def spec_in_pool(event: WorkflowJobEvent, pool: PoolConfig, config: Config) -> JobSpec:
    """The queue entry for ``event`` served by ``pool``."""
    return JobSpec(
        job_id=event.job_id,
        run_id=event.run_id,
        run_attempt=event.run_attempt,
        repository=event.repository,
        installation_id=event.installation_id,
        labels=event.labels,
        pool=pool.name,
        priority=priority_for(event, pool, config.priorities),
        name=event.name,
        workflow_name=event.workflow_name,
        head_sha=event.head_sha,
        head_branch=event.head_branch,
        html_url=event.html_url,
    )
