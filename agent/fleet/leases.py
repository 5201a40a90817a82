"""Fleet-wide chores, one host at a time: a lease per chore in Redis.

The reconciler (REST sweep of queued jobs, redelivery, queue pruning) and the periodic
registration sweep would otherwise run on every host: the same REST calls N times on one rate
limit. Each is gated by a ``Lease``:

- taken with ``SET key "<host>:<token>" NX PX ttl``, so at most one host holds it;
- renewed every ``ttl / 3`` by a script that extends it only if the value is still ours, and
  released (on a clean stop) by one that deletes it only if it is still ours: a host never
  renews or drops a lease another host took over;
- taken over when its holder dies: nobody renews it, it expires after ``ttl``, and the next
  host to try gets it. A host shown gone (no heartbeat, ``agent.fleet.hosts``) also has its
  leases deleted by the others (``release_host``), whatever a lease's remaining time;
- ``held`` is judged by this host's own clock from the moment it *sent* the last successful
  take or renew: once ``ttl`` has passed without a confirmed renewal (Redis away, a partition)
  the host stops the chore by itself, before another host can have taken the lease.

The chores themselves are idempotent (docs/design.md §7), so the short overlap a clock skew
between hosts could allow costs requests, never correctness.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from agent.fleet.handle import FleetRedis, RedisUnavailable

if TYPE_CHECKING:
    import redis
    import redis.client

log = logging.getLogger(__name__)

LEASE_TTL = 30.0  # seconds a lease outlives its last renewal
RECONCILER = "reconciler"
REGISTRATION_SWEEP = "registration-sweep"
CHORES = (RECONCILER, REGISTRATION_SWEEP)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Drop every lease whose holder is host ARGV[1] (value "<host>:<token>"); returns how many.
_RELEASE_HOST = """
local n = 0
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value and string.sub(value, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ':' then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


def lease_key(fleet: FleetRedis, chore: str) -> str:
    return fleet.key("lease", chore)


def holder_of(value: str | None) -> str | None:
    """The host named in a lease's value, or None when nobody holds it."""
    return None if value is None else value.rpartition(":")[0]


class Lease:
    """One chore's lease as seen from one host; ``hold`` keeps it (or keeps trying)."""

    def __init__(
        self,
        fleet: FleetRedis,
        chore: str,
        *,
        host: str,
        ttl: float = LEASE_TTL,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._fleet = fleet
        self.chore = chore
        self.host = host
        self.ttl = ttl
        self._clock = clock
        self._key = lease_key(fleet, chore)
        self._value = f"{host}:{secrets.token_hex(8)}"
        self._valid_until = -1.0  # by our clock; the lease is ours while now < this
        self._changed = trio.Event()

    @property
    def held(self) -> bool:
        return self._clock() < self._valid_until

    def __call__(self) -> bool:
        """``held``, as the gate the chores take (``Callable[[], bool]``)."""
        return self.held

    async def wait_held(self) -> None:
        while not self.held:
            await self._changed.wait()

    def _set(self, valid_until: float) -> None:
        was = self.held
        self._valid_until = valid_until
        if self.held != was:
            log.info(
                "fleet: %s %s the %s lease",
                self.host,
                "took" if self.held else "no longer holds",
                self.chore,
            )
            self._changed.set()
            self._changed = trio.Event()

    async def refresh(self) -> bool:
        """Take the lease if free, renew it if ours; return whether it is ours now."""
        sent = self._clock()
        ttl_ms = int(self.ttl * 1000)

        def attempt(client: redis.Redis[str]) -> bool:
            if client.execute_command("EVAL", _RENEW, 1, self._key, self._value, ttl_ms):
                return True
            return bool(client.set(self._key, self._value, nx=True, px=ttl_ms))

        try:
            ours = await self._fleet.run(attempt)
        except RedisUnavailable as exc:
            log.warning("fleet: cannot renew the %s lease: %s", self.chore, exc)
            ours = self.held  # until its own deadline: nobody else can have it before
            if not ours:
                self._set(-1.0)
            return ours
        self._set(sent + self.ttl if ours else -1.0)
        return ours

    async def release(self) -> None:
        """Give the lease up if it is still ours (a clean stop: the next host need not wait)."""
        self._set(-1.0)
        await self._fleet.run(
            lambda c: c.execute_command("EVAL", _RELEASE, 1, self._key, self._value)
        )

    async def hold(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take or renew every ``ttl / 3`` until cancelled, then release (shielded, bounded)."""
        task_status.started()
        try:
            while True:
                await self.refresh()
                await trio.sleep(self.ttl / 3)
        finally:
            # Bounded and shielded; if Redis is away it expires by itself.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(2.0),
                contextlib.suppress(RedisUnavailable),
            ):
                await self.release()


async def holders(fleet: FleetRedis, chores: Sequence[str] = CHORES) -> dict[str, str | None]:
    """Who holds each chore's lease now (None: free)."""
    keys = [lease_key(fleet, c) for c in chores]
    values: list[Any] = await fleet.run(lambda c: c.mget(keys))
    return {chore: holder_of(v) for chore, v in zip(chores, values, strict=True)}


async def release_host(fleet: FleetRedis, host: str, chores: Sequence[str] = CHORES) -> int:
    """Drop every lease ``host`` holds (it stopped heartbeating); returns how many."""
    keys = [lease_key(fleet, c) for c in chores]
    return int(
        await fleet.run(lambda c: c.execute_command("EVAL", _RELEASE_HOST, len(keys), *keys, host))
    )
