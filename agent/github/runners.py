"""Runner registrations gantryd left at GitHub: find and delete them (docs/github.md §3.4, §10.8).

A JIT runner that never ran a job is removed by GitHub by itself, but only after a day offline
(§3.2); one whose container vanished with gantryd (crash, host reboot) stays listed until then.
`sweep_offline_runners` is one idempotent pass for the pool manager's GC loop: it deletes the
runners that are offline, carry gantryd's prefix and this host's instance name
(``<prefix>-<instance>-<short id>``, the names `PoolManager` gives), and that gantryd no longer
tracks. Another host's runners and online or busy ones are never touched.
"""

from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Collection, Iterable
from dataclasses import dataclass

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
    known_names: Collection[str],
) -> SweepResult:
    """Delete this host's offline, untracked runners at each target; errors do not stop it.

    ``known_names`` must hold every runner gantryd tracks (idle, starting, busy), so a runner
    being created right now is not mistaken for a leftover. A 422 ("still running a job")
    leaves the runner alone; a 404 means it is gone already.
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
                or runner.name in known_names
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
