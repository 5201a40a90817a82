"""Runner registrations gantryd left at GitHub: find and delete them (docs/github.md §3.4, §10.8).

GitHub removes a JIT runner that never ran a job by itself within minutes (observed 2-6, JIT
configs valid about 5; docs/github.md §3.2: the documented "a day offline" is for ephemeral
runners that never connected, not what JIT runners see). A registration whose container vanished
with gantryd (crash, host reboot) may still be listed until then.
`sweep_offline_runners` is one idempotent pass for the pool manager's GC loop: it deletes the
runners that are offline, carry gantryd's prefix and this host's instance name
(``<prefix>-<instance>-<short id>``, the names `PoolManager` gives), and that gantryd no longer
tracks. Another host's runners and online or busy ones are never touched.

An organization pool's runner group may never admit some repositories (docs/github.md §3.5: the
default group takes no public repository unless told to; a ``selected`` group only its list):
GitHub then never gives their jobs to the pool's runners. ``group_policy`` reads the group and
``refusal`` says why a repository is out of its reach; ``group_report`` says it per pool for
``gantryd check-config``.
"""

from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.github.actions import (
    PER_PAGE,
    Page,
    _page,
    list_installation_repositories,
    list_org_repositories,
)
from agent.github.client import DeleteOutcome, GitHubClient, GitHubError, RunnerTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SweepResult:
    deleted: tuple[str, ...]  # runner names
    errors: tuple[str, ...]  # one message per target or runner that failed; retried next pass


MAX_RUNNER_NAME = 64  # GitHub refuses longer runner names with 422
RUNNER_ID_HEX = 8  # the unique part of a name: 4 random bytes


def name_head(prefix: str, instance: str) -> str:
    """The start every runner name of this host shares: ``<prefix>-<instance>-``.

    Prefix and instance may each be 32 characters, which with the id would pass GitHub's limit;
    a head too long keeps its start and ends in a digest of the whole head instead, so two
    hosts whose long names differ only at the end still never share a head.
    """
    head = f"{prefix}-{instance}-"
    room = MAX_RUNNER_NAME - RUNNER_ID_HEX
    if len(head) <= room:
        return head
    digest = hashlib.sha256(head.encode()).hexdigest()[:8]
    return f"{head[: room - len(digest) - 1]}{digest}-"


def is_ours(name: str, prefix: str, instance: str) -> bool:
    """Whether a runner name is one this host's gantryd gives: ``<prefix>-<instance>-<hex id>``.

    The id must be hex, so host "build" never claims host "build-2"'s runners.
    """
    head = name_head(prefix, instance)
    rest = name[len(head) :]
    return name.startswith(head) and rest != "" and all(c in string.hexdigits for c in rest)


async def sweep_offline_runners(
    client: GitHubClient,
    targets: Iterable[RunnerTarget],
    prefix: str,
    instance: str,
    tracks: Callable[[str], bool],
    *,
    dead: Collection[str] = (),
) -> SweepResult:
    """Delete this host's offline, untracked runners at each target; errors do not stop it.

    ``dead`` names other hosts' instances that are provably gone (``agent.fleet.hosts``: no
    heartbeat for ``DEAD_AFTER``): their offline, idle registrations are deleted too. Any
    other host's runner is never touched, whatever its state.

    ``tracks(name)`` says whether gantryd tracks a runner (idle, starting, busy) *now*: it is
    asked after each runner list has arrived, never before, because a runner provisioned while
    the list call was in flight is in that list but in no snapshot taken earlier (issue 13 §2:
    such runners were deleted while still starting). A 422 ("still running a job") leaves the
    runner alone; a 404 means it is gone already.
    """
    deleted: list[str] = []
    errors: list[str] = []
    for target in targets:
        try:
            runners = await client.list_runners(target, installation_id=None)
        except GitHubError as exc:
            errors.append(str(exc))
            continue
        for runner in runners:
            if (
                runner.status != "offline"
                or runner.busy
                or tracks(runner.name)
                or not any(is_ours(runner.name, prefix, i) for i in (instance, *dead))
            ):
                continue
            try:
                outcome = await client.delete_runner(target, runner.id, installation_id=None)
            except GitHubError as exc:
                errors.append(str(exc))
                continue
            if outcome is not DeleteOutcome.BUSY:
                log.info("deleted leftover runner %s (%s)", runner.name, target.path)
                deleted.append(runner.name)
    return SweepResult(deleted=tuple(deleted), errors=tuple(errors))


@dataclass(frozen=True, kw_only=True)
class GroupPolicy:
    """An organization runner group's repository access (``GET …/actions/runner-groups``)."""

    organization: str
    name: str
    visibility: str  # "all" | "selected" | "private"
    allows_public_repositories: bool
    selected: frozenset[str] = frozenset()  # lower-case full names, for "selected"


def refusal(policy: GroupPolicy, repository: str, *, private: bool) -> str | None:
    """Why GitHub never gives jobs of ``repository`` to runners of this group; None if it may."""
    where = f'runner group "{policy.name}" of {policy.organization}'
    if not private and not policy.allows_public_repositories:
        return f"{where} does not allow public repositories (allows_public_repositories is false)"
    if policy.visibility == "private" and not private:
        return f"{where} is limited to private repositories"
    if policy.visibility == "selected" and repository.lower() not in policy.selected:
        return f"{where} is limited to selected repositories and {repository} is not one"
    return None


async def _all(fetch: Callable[[Mapping[str, str] | None], Awaitable[Page]]) -> list[Any]:
    items: list[Any] = []
    page: Mapping[str, str] | None = None
    while True:
        answer = await fetch(page)
        items += answer.items
        if answer.next is None:
            return items
        page = answer.next


class NoSuchGroup(GitHubError):
    """The organization has no runner group of that name (GitHub answered, listing its groups)."""

    def __init__(self, path: str, organization: str, group: str, names: Iterable[str]) -> None:
        self.names = tuple(names)
        shown = ", ".join(self.names) or "none"
        super().__init__(
            "GET",
            path,
            200,
            f'organization {organization} has no group "{group}" (it has: {shown})',
        )


async def group_policy(client: GitHubClient, organization: str, group: str) -> GroupPolicy:
    """Read the access policy of ``organization``'s runner group named ``group``.
    Raises NoSuchGroup when the organization has no such group, GitHubError when GitHub could
    not be asked."""
    target = RunnerTarget(organization=organization)
    installation = await client.installation_id(target) if client.is_app else None
    path = f"{target.path}/actions/runner-groups"

    async def groups(page: Mapping[str, str] | None) -> Page:
        params = dict(page or {"per_page": str(PER_PAGE)})
        response = await client.request("GET", path, installation_id=installation, params=params)
        return _page(response, "runner_groups")

    every = await _all(groups)
    found = next((g for g in every if str(g.get("name", "")).lower() == group.lower()), None)
    if found is None:
        raise NoSuchGroup(path, organization, group, (str(g.get("name")) for g in every))
    selected: frozenset[str] = frozenset()
    if found.get("visibility") == "selected":
        repos_path = f"{path}/{int(found['id'])}/repositories"

        async def repositories(page: Mapping[str, str] | None) -> Page:
            params = dict(page or {"per_page": str(PER_PAGE)})
            response = await client.request(
                "GET", repos_path, installation_id=installation, params=params
            )
            return _page(response, "repositories")

        selected = frozenset(str(r["full_name"]).lower() for r in await _all(repositories))
    return GroupPolicy(
        organization=organization,
        name=str(found["name"]),
        visibility=str(found.get("visibility", "all")),
        allows_public_repositories=bool(found.get("allows_public_repositories", False)),
        selected=selected,
    )


async def unreachable_repositories(
    client: GitHubClient, organization: str, group: str, *, policy: GroupPolicy | None = None
) -> dict[str, str]:
    """Repositories of ``organization`` the installation reaches that ``group``'s runners can
    never serve: lower-case full name -> reason. ``policy``: the group's, if already read."""
    if policy is None:
        policy = await group_policy(client, organization, group)

    async def repositories(page: Mapping[str, str] | None) -> Page:
        if not client.is_app:  # a token: the organization's repositories it can see
            return await list_org_repositories(client, organization, page=page)
        installation = await client.installation_id(RunnerTarget(organization=organization))
        return await list_installation_repositories(client, installation_id=installation, page=page)

    refused: dict[str, str] = {}
    for repo in await _all(repositories):
        name = str(repo["full_name"])
        if name.split("/")[0].lower() != organization.lower():
            continue
        reason = refusal(policy, name, private=bool(repo.get("private", False)))
        if reason is not None:
            refused[name.lower()] = reason
    return refused


@dataclass(frozen=True, kw_only=True)
class GroupFinding:
    """What GitHub says of one organization pool's runner group in one organization."""

    pool: str
    problem: bool  # the group is missing or unreadable, or some repositories are out of reach
    text: str


async def group_report(
    client: GitHubClient, pools: Iterable[tuple[str, str]], organizations: Iterable[str]
) -> list[GroupFinding]:
    """For each ``(pool, runner_group)`` and organization: does the group exist, and which of
    the repositories gantryd reaches may its runners serve. A group that cannot be read (a
    missing permission, say) is reported with the reason; GitHubError without an HTTP status
    (GitHub unreachable) is raised: then nothing was checked."""
    findings = []
    for pool, group in pools:
        for org in organizations:
            try:
                policy = await group_policy(client, org, group)
                refused = await unreachable_repositories(client, org, group, policy=policy)
            except NoSuchGroup as exc:
                text = (
                    f'organization {org} has no runner group "{group}" (it has: '
                    f"{', '.join(exc.names) or 'none'}): no runner of this pool can register; "
                    "fix runner_group or create the group"
                )
                findings.append(GroupFinding(pool=pool, problem=True, text=text))
                continue
            except GitHubError as exc:
                if exc.status is None:
                    raise
                text = f'runner group "{group}" of {org} not checked: {exc}'
                findings.append(GroupFinding(pool=pool, problem=True, text=text))
                continue
            public = str(policy.allows_public_repositories).lower()
            text = (
                f'runner group "{policy.name}" of {org} (visibility {policy.visibility}, '
                f"allows_public_repositories {public}) "
            )
            if refused:
                never = "; ".join(f"{repo} ({why})" for repo, why in sorted(refused.items()))
                text += f"never serves {never}"
            else:
                text += f"serves every repository of {org} gantryd reaches"
            findings.append(GroupFinding(pool=pool, problem=bool(refused), text=text))
    return findings
