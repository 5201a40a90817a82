"""GitHub REST endpoints gantryd calls: runners and JIT registration, check runs, statuses.

Each method is one endpoint of docs/github.md, made through ``GitHubTransport`` (auth, rate
limits, retries, errors), which this client extends; ``request``/``send`` stay open for callers
with endpoints of their own (the scale-set and Actions service clients).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from agent.github.auth import AppAuth, Secret, TokenAuth
from agent.github.paths import repo_path
from agent.github.records import DeleteOutcome as DeleteOutcome
from agent.github.records import GitHubError as GitHubError
from agent.github.records import JitConfig as JitConfig
from agent.github.records import PermissionMissing as PermissionMissing
from agent.github.records import RunnerInfo as RunnerInfo
from agent.github.records import RunnerTarget as RunnerTarget
from agent.github.transport import GitHubTransport

REPOSITORY_RUNNER_GROUP = 1  # repository runners always join the Default group (§3.2)


class GitHubClient(GitHubTransport):
    """GitHub's REST endpoints for one set of credentials (see ``GitHubTransport``).

    Use as an async context manager. Runner group ids are cached per organization and name,
    forgotten with the rest of the identity when ``set_auth`` changes it.
    """

    def __init__(
        self,
        api_url: str,
        auth: AppAuth | TokenAuth,
        *,
        timeout: float = 30.0,
        max_concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            api_url,
            auth,
            timeout=timeout,
            max_concurrency=max_concurrency,
            transport=transport,
        )
        self._groups: dict[tuple[str, str], int] = {}

    def _forget_identity(self) -> None:
        super()._forget_identity()
        self._groups.clear()

    # -- runners (§3, §5) -----------------------------------------------------------------

    async def runner_group_id(
        self, target: RunnerTarget, group: str, *, installation_id: int | None
    ) -> int:
        """The id of a runner group by name: 1 at repository scope, looked up for an org (§3.2)."""
        if target.repository is not None:
            return REPOSITORY_RUNNER_GROUP
        key = (target.owner.lower(), group.lower())
        if key not in self._groups:
            path = f"{target.path}/actions/runner-groups"
            installation = await self._installation_for(target, installation_id)
            groups = await self._pages(
                path, "runner_groups", installation_id=installation, params={}
            )
            for found in groups:
                self._groups[(key[0], str(found["name"]).lower())] = int(found["id"])
            if key not in self._groups:
                names = ", ".join(str(g["name"]) for g in groups) or "none"
                raise GitHubError(
                    "GET",
                    path,
                    200,
                    f'organization {target.owner} has no runner group "{group}" '
                    f"(it has: {names}); fix runner_group in the pool or create the group",
                )
        return self._groups[key]

    async def generate_jitconfig(
        self,
        target: RunnerTarget,
        *,
        name: str,
        labels: tuple[str, ...],
        runner_group_id: int,
        installation_id: int | None,
    ) -> JitConfig:
        """Register a just-in-time runner; GitHub answers with its encoded config once only."""
        path = f"{target.path}/actions/runners/generate-jitconfig"
        response = await self._request(
            "POST",
            path,
            installation_id=await self._installation_for(target, installation_id),
            json={"name": name, "runner_group_id": runner_group_id, "labels": list(labels)},
        )
        body = self._check(response, path, 201).json()
        return JitConfig(
            runner_id=int(body["runner"]["id"]),
            runner_name=str(body["runner"]["name"]),
            encoded=Secret(str(body["encoded_jit_config"])),
        )

    async def list_runners(
        self, target: RunnerTarget, *, installation_id: int | None
    ) -> list[RunnerInfo]:
        """Every runner registered at the target (all pages)."""
        runners = await self._pages(
            f"{target.path}/actions/runners",
            "runners",
            installation_id=await self._installation_for(target, installation_id),
            params={},
        )
        return [
            RunnerInfo(
                id=int(r["id"]), name=str(r["name"]), status=str(r["status"]), busy=r["busy"]
            )
            for r in runners
        ]

    async def delete_runner(
        self, target: RunnerTarget, runner_id: int, *, installation_id: int | None
    ) -> DeleteOutcome:
        """Deregister a runner; 404 counts as done, 422 means a job was just assigned."""
        path = f"{target.path}/actions/runners/{runner_id}"
        response = await self._request(
            "DELETE", path, installation_id=await self._installation_for(target, installation_id)
        )
        if response.status_code == 404:
            return DeleteOutcome.NOT_FOUND
        if response.status_code == 422:
            return DeleteOutcome.BUSY
        self._check(response, path, 204)
        return DeleteOutcome.DELETED

    # -- reporting (§6) and cancelling (§4) -----------------------------------------------

    async def create_check_run(
        self, repository: str, body: Mapping[str, Any], *, installation_id: int | None
    ) -> int:
        """``POST /repos/{o}/{r}/check-runs`` (App only, checks: write); the new run's id."""
        path = repo_path(repository, "check-runs")
        response = await self._request(
            "POST",
            path,
            installation_id=await self._installation_for(repository, installation_id),
            json=body,
        )
        return int(self._check(response, path, 201).json()["id"])

    async def update_check_run(
        self,
        repository: str,
        check_run_id: int,
        body: Mapping[str, Any],
        *,
        installation_id: int | None,
    ) -> None:
        path = repo_path(repository, "check-runs", check_run_id)
        response = await self._request(
            "PATCH",
            path,
            installation_id=await self._installation_for(repository, installation_id),
            json=body,
        )
        self._check(response, path, 200)

    async def find_check_run(
        self, repository: str, ref: str, *, name: str, external_id: str, installation_id: int | None
    ) -> int | None:
        """The id of our check run on ``ref`` with this name and external id, if one exists.

        Used after a crash between creating a check run and recording its id, so a restart
        adopts it instead of creating a second one.
        """
        path = repo_path(repository, "commits", ref, "check-runs")
        runs = await self._pages(
            path,
            "check_runs",
            installation_id=await self._installation_for(repository, installation_id),
            params={"check_name": name},
        )
        return next((int(r["id"]) for r in runs if r.get("external_id") == external_id), None)

    async def create_commit_status(
        self, repository: str, sha: str, body: Mapping[str, Any], *, installation_id: int | None
    ) -> None:
        """``POST /repos/{o}/{r}/statuses/{sha}`` (statuses: write; §6.2)."""
        path = repo_path(repository, "statuses", sha)
        response = await self._request(
            "POST",
            path,
            installation_id=await self._installation_for(repository, installation_id),
            json=body,
        )
        self._check(response, path, 201)

    async def cancel_workflow_run(
        self, repository: str, run_id: int, *, installation_id: int | None
    ) -> bool:
        """``POST …/actions/runs/{id}/cancel``: True if accepted (202), False if 409 (over)."""
        path = repo_path(repository, "actions", "runs", run_id, "cancel")
        response = await self._request(
            "POST", path, installation_id=await self._installation_for(repository, installation_id)
        )
        if response.status_code == 409:
            return False
        self._check(response, path, 202)
        return True
