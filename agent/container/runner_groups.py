"""Which repositories an organization pool's runner group never admits (docs/github.md §3.5).

Kept apart from the pool supervisor because it is GitHub-side policy, not runner state: the
answer is re-read at start, after each reload and every ``gc_interval``, and only consulted when
a job is placed (refused at once with the reason) and shown by status.
"""

from __future__ import annotations

import logging

from agent.config import Config, Scope
from agent.container.registry import Registry
from agent.github.client import GitHubClient, GitHubError
from agent.github.runners import NoSuchGroup, unreachable_repositories
from agent.reload import LiveConfig

log = logging.getLogger(__name__)


class RunnerGroups:
    """The last answer per organization pool: repository -> why its group never admits it, and
    whether the group exists at all."""

    def __init__(self, *, live: LiveConfig, github: GitHubClient, registry: Registry) -> None:
        self._live = live
        self._github = github
        self._registry = registry
        self.unreachable: dict[str, dict[str, str]] = {}
        self.missing: dict[str, str] = {}  # pool -> its group is absent at GitHub: why
        self._checked: Config | None = None  # the config they were checked for

    def stale(self) -> bool:
        """Not checked yet for the configuration in force (start, or a reload since)."""
        return self._checked is not self._live.current

    async def check(self) -> None:
        """For each organization pool, which repositories its runner group never admits:
        logged as a warning naming the pool, shown by status, and their jobs refused at once
        with that reason. A GitHub error keeps the last answer."""
        config = self._live.current
        self._checked = config
        found: dict[str, dict[str, str]] = {}
        missing: dict[str, str] = {}
        for pool in config.pools:
            if pool.scope is not Scope.ORGANIZATION:
                continue
            found[pool.name] = {}
            for org in config.github.organizations:
                try:
                    refused = await unreachable_repositories(self._github, org, pool.runner_group)
                except NoSuchGroup as exc:
                    missing[pool.name] = f"{exc.message}: no runner of this pool can register"
                    log.error("pool %s: %s", pool.name, missing[pool.name])
                    refused = {}
                except GitHubError as exc:
                    log.warning("pool %s: cannot read runner group of %s: %s", pool.name, org, exc)
                    refused = self.unreachable.get(pool.name, {})
                found[pool.name].update(refused)
            for repo, reason in sorted(found[pool.name].items()):
                log.warning("pool %s can never serve %s: %s", pool.name, repo, reason)
        self.unreachable, self.missing = found, missing
        self._registry.notify()
