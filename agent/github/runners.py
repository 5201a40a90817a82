"""Runner registrations gantryd left at GitHub: find and delete them (reference §3.4, §10.8).

A JIT runner that never ran a job is removed by GitHub by itself, but only after a day offline
(§3.2); one whose container vanished with gantryd (crash, host reboot) stays listed until then.
`sweep_offline_runners` is one idempotent pass for the pool manager's GC loop: it deletes the
runners that are offline, carry gantryd's prefix and this host's instance name
(``<prefix>-<instance>-<short id>``, the names `PoolManager` gives), and that gantryd no longer
tracks. Another host's runners and online or busy ones are never touched.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.github.client import DeleteOutcome, GitHubClient, GitHubError, RunnerTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SweepResult:
    deleted: tuple[str, ...]  # runner names
    errors: tuple[str, ...]  # one message per target or runner that failed; retried next pass


def is_ours(name: str, prefix: str, instance: str) -> bool:
    """Whether a runner name is one this host's gantryd gives: ``<prefix>-<instance>-<hex id>``.

    The id must be hex, so host "build" never claims host "build-2"'s runners.
    """
    head = f"{prefix}-{instance}-"
    rest = name[len(head) :]
    return name.startswith(head) and rest != "" and all(c in string.hexdigits for c in rest)


async def sweep_offline_runners(
    client: GitHubClient,
    targets: Iterable[RunnerTarget],
    prefix: str,
    instance: str,
    tracks: Callable[[str], bool],
) -> SweepResult:
    """Delete this host's offline, untracked runners at each target; errors do not stop it.

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
                or not is_ours(runner.name, prefix, instance)
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
