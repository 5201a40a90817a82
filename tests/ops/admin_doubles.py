"""The pool manager and the scheduler as the admin server sees them, for its tests: the two
narrow views it reads (runners, pool notes) and writes (drain), with nothing behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.container.lifecycle import Runner


@dataclass
class Pools:
    held: list[Runner] = field(default_factory=list)
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def runners(self) -> list[Runner]:
        return self.held

    def pool_notes(self, pool: str) -> tuple[str, ...]:
        return self.notes.get(pool, ())


@dataclass
class Paused:
    paused: bool = False

    async def set_drained(self, drained: bool) -> None:
        self.paused = drained
