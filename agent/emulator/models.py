"""The emulator's records and their JSON as GitHub renders it.

Plain mutable dataclasses owned by `agent.emulator.state.Emulator`; only it changes them. The
``*_json`` functions produce GitHub's object shapes (reference §2.2 workflow_job, §3.2/§3.4
runner, §4 job, §5.2 installation token) so the REST API and the webhooks render one thing one way.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Labels GitHub marks "read-only" (the runner's default labels: self-hosted, OS, architecture);
# every other label is "custom" (reference §3.2 example). Compared case-insensitively.
READ_ONLY_LABELS = frozenset(
    {"self-hosted", "linux", "windows", "macos", "x64", "x86", "arm", "arm64"}
)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for a matching runner
    IN_PROGRESS = "in_progress"  # assigned to a runner (runner_* fields set)
    COMPLETED = "completed"  # conclusion set


class Conclusion(enum.StrEnum):
    SUCCESS = "success"  # script exited 0
    FAILURE = "failure"  # script exited non-zero
    CANCELLED = "cancelled"  # cancelled while queued


class AccountType(enum.StrEnum):
    USER = "User"
    ORGANIZATION = "Organization"


def iso8601(epoch: float) -> str:
    """GitHub's timestamp form, ``YYYY-MM-DDTHH:MM:SSZ`` (reference §6.1)."""
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
    """Where a runner is registered: one repository, or an organization (reference §3.1)."""

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


@dataclass(kw_only=True)
class RunnerGroup:
    id: int
    name: str
    default: bool = False


@dataclass(kw_only=True)
class Session:
    """An open broker session: the runner is online while it polls (see state.SESSION_IDLE)."""

    id: str
    last_seen: float  # emulator clock; updated when a poll starts or ends
    polls: int = 0  # long-polls in progress


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
    """Schema "Self hosted runners" (reference §3.2)."""
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
    """One "Set up job" step once started; ``steps`` is empty while queued (reference §2.2)."""
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
    """The workflow job, identical in webhooks (§2.2) and ``GET .../actions/jobs/{id}`` (§4)."""
    repo = job.repository.full_name
    return {
        "id": job.id,
        "run_id": job.run_id,
        "run_attempt": 1,
        "run_url": f"{api_url}/repos/{repo}/actions/runs/{job.run_id}",
        "node_id": node_id("CR_", job.id),
        "head_sha": job.head_sha,
        "head_branch": job.head_branch,
        "workflow_name": job.workflow_name,
        "url": f"{api_url}/repos/{repo}/actions/jobs/{job.id}",
        "html_url": f"{api_url}/{repo}/actions/runs/{job.run_id}/job/{job.id}",
        "check_run_url": f"{api_url}/repos/{repo}/check-runs/{job.id}",
        "status": job.status.value,
        "conclusion": job.conclusion.value if job.conclusion else None,
        "created_at": iso8601(job.created_at),
        # "Present even while queued (equals created_at in examples)" (§2.2).
        "started_at": iso8601(job.started_at if job.started_at is not None else job.created_at),
        "completed_at": iso8601(job.completed_at) if job.completed_at is not None else None,
        "name": job.name,
        "steps": step_json(job),
        "labels": list(job.labels),
        "runner_id": job.runner_id,
        "runner_name": job.runner_name,
        "runner_group_id": job.runner_group_id,
        "runner_group_name": job.runner_group_name,
    }


def token_json(token: InstallationToken) -> dict[str, Any]:
    """201 body of ``POST /app/installations/{id}/access_tokens`` (reference §5.2)."""
    body: dict[str, Any] = {
        "token": token.token,
        "expires_at": iso8601(token.expires_at),
        "permissions": dict(token.permissions),
        "repository_selection": "selected",
    }
    if token.repositories is not None:
        body["repositories"] = [{"full_name": name} for name in token.repositories]
    return body
