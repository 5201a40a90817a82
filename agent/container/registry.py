"""This host's runners: one map by name, their rows in the state database, their peaks.

Every fact about a runner is on its ``Runner``; the registry only finds runners (by name, by
container id, by job) and writes each change before GitHub or Docker hear of it, so a restarted
gantryd can adopt what it finds. ``wait_changed`` wakes at every change of a runner or a count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import trio

from agent.container.lifecycle import LIVE_STATES, PoolStats, Runner
from agent.container.store import RunnerStore
from agent.queue.base import QueueError

log = logging.getLogger(__name__)


class Registry:
    """Runners by name. Owned by the pool manager; its helpers share it."""

    def __init__(self, store: RunnerStore, stats: PoolStats) -> None:
        self._store = store
        self._stats = stats
        self._runners: dict[str, Runner] = {}
        self._changed = trio.Event()  # set and replaced at every change

    def __iter__(self) -> Iterator[Runner]:
        """A snapshot: runners may come and go while the caller awaits."""
        return iter(list(self._runners.values()))

    def __len__(self) -> int:
        return len(self._runners)

    def __contains__(self, runner: Runner) -> bool:
        return self._runners.get(runner.name) is runner

    def names(self) -> set[str]:
        return set(self._runners)

    def get(self, name: str | None) -> Runner | None:
        return self._runners.get(name or "")

    def by_container(self, container_id: str) -> Runner | None:
        return next((r for r in self._runners.values() if r.container_id == container_id), None)

    def live(self) -> list[Runner]:
        return [r for r in self._runners.values() if r.state in LIVE_STATES]

    def waiting_for(self, job_id: int) -> Runner | None:
        """The runner still waiting that was made for ``job_id``."""
        return next((r for r in self._runners.values() if r.waiting and r.made_for == job_id), None)

    def runs(self, job_id: int) -> bool:
        """Whether GitHub gave ``job_id`` to one of these runners."""
        return any(r.running_job == job_id for r in self._runners.values())

    def add(self, runner: Runner) -> None:
        self._runners[runner.name] = runner
        self.note_peaks(runner)

    def note_peaks(self, runner: Runner) -> None:
        """Count the most live runners at once, overall and in ``runner``'s repository."""
        live = self.live()
        self._stats.peak_runners = max(self._stats.peak_runners, len(live))
        if runner.repository is not None:
            here = sum(1 for r in live if r.repository == runner.repository)
            peaks = self._stats.peak_by_repository
            peaks[runner.repository] = max(peaks.get(runner.repository, 0), here)

    async def save(self, runner: Runner) -> None:
        """Write the runner's row; a failure is logged (the next change writes it again)."""
        self.notify()
        if runner not in self:
            return
        try:
            await self._store.save(runner)
        except QueueError as exc:
            log.error("state database: cannot save runner %s: %s", runner.name, exc)

    async def forget(self, runner: Runner) -> None:
        """Drop the runner and its row: it has no registration or container left."""
        self._runners.pop(runner.name, None)
        try:
            await self._store.delete(runner.name)
        except QueueError as exc:
            log.error("state database: cannot delete runner %s: %s", runner.name, exc)
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()
