"""What the REST client returns and raises: GitHub's refusals as errors, and its records.

Kept apart from `agent.github.client` so the modules that only name a runner target or catch a
``GitHubError`` read one small file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.github.auth import Secret
from agent.github.paths import org_path, repo_path


class GitHubError(Exception):
    """GitHub answered with an error status, or could not be reached."""

    def __init__(self, method: str, path: str, status: int | None, message: str) -> None:
        shown = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"GitHub {method} {path}: {shown}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class PermissionMissing(GitHubError):
    """403 "Resource not accessible by …": the credentials lack a permission GitHub names.

    GitHub lists what would have been accepted in ``X-Accepted-GitHub-Permissions`` (e.g.
    ``checks=write``); the message tells the operator what to grant (docs/github.md §5.3).
    """

    def __init__(self, method: str, path: str, message: str, accepted: str, *, app: bool) -> None:
        self.permission = accepted
        shown = " or ".join(
            ", ".join(p.strip().replace("=", ": ") for p in alternative.split(","))
            for alternative in accepted.split(";")
            if alternative.strip()
        )
        if app:
            fix = (
                f'grant the GitHub App the "{shown}" permission (App settings → Permissions), '
                "then accept the new permission in each installation"
            )
        else:
            fix = f'give the token the "{shown}" permission (or the matching classic scope)'
        super().__init__(method, path, 403, f"{message}: {fix}")


class DeleteOutcome(enum.StrEnum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"  # already gone: as good as deleted
    BUSY = "busy"  # 422: a job was just assigned; leave the runner alone


@dataclass(frozen=True, kw_only=True)
class RunnerTarget:
    """Where a runner is registered: a repository ("owner/name") or an organization."""

    repository: str | None = None
    organization: str | None = None

    @property
    def path(self) -> str:
        """``/repos/{owner}/{name}`` or ``/orgs/{org}``; InvalidName for a name GitHub
        would never give (paths.py builds every REST path from outside names)."""
        if self.repository is not None:
            return repo_path(self.repository)
        assert self.organization is not None
        return org_path(self.organization)

    @property
    def owner(self) -> str:
        if self.repository is not None:
            return self.repository.split("/", 1)[0]
        assert self.organization is not None
        return self.organization


@dataclass(frozen=True, kw_only=True)
class JitConfig:
    runner_id: int
    runner_name: str
    encoded: Secret  # the runner's credentials: never logged, never in docker inspect


@dataclass(frozen=True, kw_only=True)
class RunnerInfo:
    """A registered runner as ``GET …/actions/runners`` lists it (§3.4)."""

    id: int
    name: str
    status: str  # "online" | "offline"
    busy: bool
