"""The emulator's records and their JSON as GitHub renders it.

Plain mutable dataclasses owned by `agent.emulator.state.Emulator`; only it changes them. The
``*_json`` functions produce GitHub's object shapes (docs/github.md §2.2 workflow_job, §3.2/§3.4
runner, §4 job, §5.2 installation token) so the REST API and the webhooks render one thing one way.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Labels GitHub marks "read-only" (the runner's default labels: self-hosted, OS, architecture);
# every other label is "custom" (docs/github.md §3.2 example). Compared case-insensitively.
READ_ONLY_LABELS = frozenset(
    {"self-hosted", "linux", "windows", "macos", "x64", "x86", "arm", "arm64"}
)


class JobStatus(enum.StrEnum):
    WAITING = "waiting"  # its environment's reviewers have not approved it yet (§2.1)
    QUEUED = "queued"  # waiting for a matching runner
    IN_PROGRESS = "in_progress"  # assigned to a runner (runner_* fields set)
    COMPLETED = "completed"  # conclusion set


class Conclusion(enum.StrEnum):
    SUCCESS = "success"  # script exited 0
    FAILURE = "failure"  # script exited non-zero, or a reviewer rejected its deployment
    CANCELLED = "cancelled"  # cancelled while queued or waiting


class AccountType(enum.StrEnum):
    USER = "User"
    ORGANIZATION = "Organization"


RunnerVersion = tuple[int, int, int]


def parse_runner_version(text: str) -> RunnerVersion:
    """``2.336.0`` (the runner's ``runnerVersion``, an optional ``v`` before it) as a tuple."""
    parts = text.removeprefix("v").split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"not a runner version (major.minor.patch): {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def iso8601(epoch: float) -> str:
    """GitHub's timestamp form, ``YYYY-MM-DDTHH:MM:SSZ`` (docs/github.md §6.1)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(prefix: str, number: int) -> str:
    return prefix + base64.b64encode(f"{prefix}{number}".encode()).decode().rstrip("=")


@dataclass(kw_only=True)
class Account:
    login: str
    id: int
    type: AccountType


@dataclass(kw_only=True)
class Repository:
    id: int
    owner: Account
    name: str
    private: bool = True

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"


@dataclass(kw_only=True)
class Environment:
    """A deployment environment of a repository; with reviewers, its jobs wait for approval."""

    id: int
    repository: Repository
    name: str
    required_reviewers: bool = False


@dataclass(kw_only=True)
class Deployment:
    """The deployment GitHub creates for a job that names an environment."""

    id: int
    environment: Environment
    created_at: float
    updated_at: float


@dataclass(kw_only=True)
class Installation:
    """An App installation: on one account, for the listed repositories ("selected")."""

    id: int
    account: Account
    repositories: tuple[str, ...]  # full names
    permissions: dict[str, str]  # e.g. {"administration": "write"}


@dataclass(kw_only=True)
class InstallationToken:
    token: str
    installation_id: int
    expires_at: float  # epoch seconds
    permissions: dict[str, str]
    repositories: tuple[str, ...] | None  # None: every repository of the installation


@dataclass(frozen=True, kw_only=True)
class RunnerScope:
    """Where a runner is registered: one repository, or an organization (docs/github.md §3.1)."""

    repository: str | None = None  # "owner/name"
    organization: str | None = None

    def covers(self, repo: Repository) -> bool:
        """A repository runner serves its repository only; an org runner any repo of the org."""
        if self.repository is not None:
            return self.repository.lower() == repo.full_name.lower()
        assert self.organization is not None
        return self.organization.lower() == repo.owner.login.lower()

    def __str__(self) -> str:
        return self.repository or f"org {self.organization}"


class GroupVisibility(enum.StrEnum):
    """Which repositories of the organization may use a runner group's runners."""

    ALL = "all"  # every repository (public ones only with allows_public_repositories)
    SELECTED = "selected"  # the group's selected repositories
    PRIVATE = "private"  # private (and internal) repositories


@dataclass(kw_only=True)
class RunnerGroup:
    """An organization's runner group and its repository access policy.

    GitHub's default: "only private repositories can access the runners in a runner group";
    ``allows_public_repositories`` overrides it (false on creation, the Default group included).
    Repository runners belong to a fixed Default group (id 1) with no policy of their own.
    """

    id: int
    name: str
    default: bool = False
    visibility: GroupVisibility = GroupVisibility.ALL
    allows_public_repositories: bool = False
    selected_repository_ids: set[int] = field(default_factory=set)

    def admits(self, repo: Repository) -> bool:
        """Whether jobs of ``repo`` may run on this group's (organization) runners."""
        if not repo.private and not self.allows_public_repositories:
            return False
        if self.visibility is GroupVisibility.SELECTED:
            return repo.id in self.selected_repository_ids
        if self.visibility is GroupVisibility.PRIVATE:
            return repo.private
        return True


@dataclass(kw_only=True)
class Session:
    """An open broker session: the runner is online while it polls (see state.SESSION_IDLE)."""

    id: str
    last_seen: float  # emulator clock; updated when a poll starts or ends
    polls: int = 0  # long-polls in progress
    # Whether the runner's version has been shown to meet the emulator's floor (always, without
    # one): from the session's ``agent.version`` or an accepted poll's ``runnerVersion``. No job
    # is assigned before, so a runner refused as deprecated never holds one (docs/github.md §8.3).
    version_ok: bool = False


@dataclass(kw_only=True)
class Runner:
    id: int
    name: str
    scope: RunnerScope
    labels: tuple[str, ...]
    label_ids: tuple[int, ...]
    runner_group: RunnerGroup
    work_folder: str
    secret: str  # the per-runner credential inside its JIT config
    registered_at: float  # emulator clock; an idle JIT runner is removed some minutes later
    os: str = "unknown"  # GitHub reports "unknown" until the runner has connected
    session: Session | None = None
    job_id: int | None = None  # assigned job; busy while set
    ran_job: bool = False  # a JIT runner takes one job, then is removed
    scale_set_id: int | None = None  # made by a scale set's generatejitconfig (`scalesets`)


@dataclass(kw_only=True)
class Job:
    id: int
    run_id: int
    repository: Repository
    installation_id: int
    labels: tuple[str, ...]
    script: str
    name: str
    workflow_name: str
    head_branch: str
    head_sha: str
    created_at: float
    run_attempt: int = 1  # 1, then one more for every re-run of the run or of this job
    # The workflow's `container:` image (the job message's jobContainer): the runner creates a
    # job container through its Docker daemon and runs the steps in it; None: on the runner.
    container: str | None = None
    # runs-on's ``group`` (``runs-on: {group: X, labels: [...]}``): only runners of that
    # organization runner group may take the job. Never in a payload: GitHub's workflow_job
    # carries ``labels`` alone and ``runner_group_name`` is null until a runner has the job.
    runs_on_group: str | None = None
    deployment: Deployment | None = None  # when the job names an environment
    status: JobStatus = JobStatus.QUEUED
    conclusion: Conclusion | None = None
    started_at: float | None = None
    completed_at: float | None = None
    runner_id: int | None = None
    runner_name: str | None = None
    runner_group_id: int | None = None
    runner_group_name: str | None = None
    exit_code: int | None = None
    log: bytes = field(default=b"", repr=False)


def label_json(runner: Runner) -> list[dict[str, Any]]:
    return [
        {
            "id": label_id,
            "name": name,
            "type": "read-only" if name.lower() in READ_ONLY_LABELS else "custom",
        }
        for name, label_id in zip(runner.labels, runner.label_ids, strict=True)
    ]


def runner_json(runner: Runner, *, online: bool) -> dict[str, Any]:
    """Schema "Self hosted runners" (docs/github.md §3.2)."""
    return {
        "id": runner.id,
        "name": runner.name,
        "os": runner.os,
        "status": "online" if online else "offline",
        "busy": runner.job_id is not None,
        "ephemeral": True,
        "runner_group_id": runner.runner_group.id,
        "labels": label_json(runner),
    }


def runner_group_json(group: RunnerGroup, org: str, api_url: str) -> dict[str, Any]:
    """Schema "runner-groups-org" (``GET /orgs/{org}/actions/runner-groups[/{id}]``); the
    ``selected_repositories_url`` only for ``selected`` groups, as in the docs' example."""
    url = f"{api_url}/orgs/{org}/actions/runner-groups/{group.id}"
    body: dict[str, Any] = {
        "id": group.id,
        "name": group.name,
        "visibility": group.visibility.value,
        "default": group.default,
        "runners_url": f"{url}/runners",
        "inherited": False,
        "allows_public_repositories": group.allows_public_repositories,
        "restricted_to_workflows": False,
        "selected_workflows": [],
        "workflow_restrictions_read_only": False,
    }
    if group.visibility is GroupVisibility.SELECTED:
        body["selected_repositories_url"] = f"{url}/repositories"
    return body


def account_json(account: Account) -> dict[str, Any]:
    return {
        "login": account.login,
        "id": account.id,
        "node_id": node_id("U_" if account.type is AccountType.USER else "O_", account.id),
        "type": account.type.value,
    }


def repository_json(repo: Repository, api_url: str) -> dict[str, Any]:
    return {
        "id": repo.id,
        "node_id": node_id("R_", repo.id),
        "name": repo.name,
        "full_name": repo.full_name,
        "private": repo.private,
        "owner": account_json(repo.owner),
        "html_url": f"{api_url}/{repo.full_name}",
        "url": f"{api_url}/repos/{repo.full_name}",
        "default_branch": "main",
    }


def step_json(job: Job) -> list[dict[str, Any]]:
    """One "Set up job" step once started; ``steps`` is empty while queued (docs/github.md §2.2)."""
    if job.started_at is None or job.runner_id is None:
        return []
    return [
        {
            "name": "Set up job",
            "status": job.status.value,
            "conclusion": job.conclusion.value if job.conclusion else None,
            "number": 1,
            "started_at": iso8601(job.started_at),
            "completed_at": iso8601(job.completed_at) if job.completed_at else None,
        }
    ]


def job_json(job: Job, api_url: str) -> dict[str, Any]:
    """The workflow job, identical in webhooks (§2.2) and ``GET .../actions/jobs/{id}`` (§4);
    keys in the order of octokit's payload examples."""
    repo = job.repository.full_name
    return {
        "id": job.id,
        "run_id": job.run_id,
        "workflow_name": job.workflow_name,
        "head_branch": job.head_branch,
        "run_url": f"{api_url}/repos/{repo}/actions/runs/{job.run_id}",
        "run_attempt": job.run_attempt,
        "node_id": node_id("CR_", job.id),
        "head_sha": job.head_sha,
        "url": f"{api_url}/repos/{repo}/actions/jobs/{job.id}",
        "html_url": f"{api_url}/{repo}/actions/runs/{job.run_id}/job/{job.id}",
        "status": job.status.value,
        "conclusion": job.conclusion.value if job.conclusion else None,
        "created_at": iso8601(job.created_at),
        # "Present even while queued (equals created_at in examples)" (§2.2).
        "started_at": iso8601(job.started_at if job.started_at is not None else job.created_at),
        "completed_at": iso8601(job.completed_at) if job.completed_at is not None else None,
        "name": job.name,
        "steps": step_json(job),
        "check_run_url": f"{api_url}/repos/{repo}/check-runs/{job.id}",
        "labels": list(job.labels),
        "runner_id": job.runner_id,
        "runner_name": job.runner_name,
        "runner_group_id": job.runner_group_id,
        "runner_group_name": job.runner_group_name,
    }


# The app GitHub names as the creator of every Actions deployment, as in octokit's
# payload-examples/api.github.com/workflow_job/queued.with-deployment.payload.json.
ACTIONS_APP: dict[str, Any] = {
    "id": 15368,
    "slug": "github-actions",
    "node_id": "MDM6QXBwMTUzNjg=",
    "owner": {
        "login": "github",
        "id": 9919,
        "node_id": "MDEyOk9yZ2FuaXphdGlvbjk5MTk=",
        "type": "Organization",
    },
    "name": "GitHub Actions",
    "description": "Automate your workflow from idea to production",
    "external_url": "https://help.github.com/en/actions",
    "html_url": "https://github.com/apps/github-actions",
    "created_at": "2018-07-30T09:30:17Z",
    "updated_at": "2019-12-10T19:04:12Z",
    "permissions": {
        "actions": "write",
        "checks": "write",
        "deployments": "write",
        "metadata": "read",
        "statuses": "write",
    },
    "events": ["check_run", "check_suite", "deployment", "deployment_status", "workflow_run"],
}


def deployment_json(job: Job, creator: dict[str, Any], api_url: str) -> dict[str, Any] | None:
    """The ``deployment`` of a job that names an environment, shaped as in octokit's
    ``queued.with-deployment`` example (schema common/deployment); None for other jobs."""
    deployment = job.deployment
    if deployment is None:
        return None
    repo = job.repository.full_name
    url = f"{api_url}/repos/{repo}/deployments/{deployment.id}"
    return {
        "url": url,
        "id": deployment.id,
        "node_id": node_id("DE_", deployment.id),
        "task": "deploy",
        "original_environment": deployment.environment.name,
        "environment": deployment.environment.name,
        "description": None,
        "created_at": iso8601(deployment.created_at),
        "updated_at": iso8601(deployment.updated_at),
        "statuses_url": f"{url}/statuses",
        "repository_url": f"{api_url}/repos/{repo}",
        "creator": creator,
        "sha": job.head_sha,
        "ref": job.head_branch,
        "payload": {},
        "transient_environment": False,
        "production_environment": False,
        "performed_via_github_app": ACTIONS_APP,
    }


def token_json(token: InstallationToken) -> dict[str, Any]:
    """201 body of ``POST /app/installations/{id}/access_tokens`` (docs/github.md §5.2)."""
    body: dict[str, Any] = {
        "token": token.token,
        "expires_at": iso8601(token.expires_at),
        "permissions": dict(token.permissions),
        "repository_selection": "selected",
    }
    if token.repositories is not None:
        body["repositories"] = [{"full_name": name} for name in token.repositories]
    return body
