"""The GitHub rate-limit budget of each credential, shared by every host that spends it.

GitHub counts one budget per credential (an installation, the App's JWT, a token) however many
hosts use it. Each host's ``GitHubClient`` keeps a gate per credential (``agent.github.ratelimit``)
that holds requests once the budget is spent; alone, it only knows what GitHub told *this* host.
``share_rate_limits`` merges the gates through ``{prefix}:ratelimit:<credential>`` every
``SYNC_INTERVAL``: each host writes what it last saw (limit, remaining, reset, a secondary-limit
hold) and reads back the fleet's figure — within one window the lowest remaining any host saw,
a later window's outright, the latest hold — which its gate then enforces before every request.

What this does not do: count each request in Redis (a round trip per GitHub call). Between
syncs a host spends on the last shared figure less its own requests, so the fleet may overshoot
by what the other hosts sent within one interval; GitHub's next answer corrects every host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from agent.fleet.handle import FleetRedis, RedisUnavailable

if TYPE_CHECKING:
    import redis
    import redis.client

log = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0

# KEYS[1] the credential's hash; ARGV: limit, remaining, reset, hold_until ("" = unknown).
_MERGE = """
local function num(v)
  if not v or v == '' then return nil end
  return tonumber(v)
end
local function text(v)
  if v == nil then return '' end
  return tostring(v)
end
local cur = redis.call('HMGET', KEYS[1], 'limit', 'remaining', 'reset', 'hold')
local limit, remaining, reset, hold = num(cur[1]), num(cur[2]), num(cur[3]), num(cur[4]) or 0
local l, r, t, h = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), num(ARGV[4]) or 0
if r and t then
  if not reset or not remaining or t > reset then
    limit, remaining, reset = l, r, t
  elseif t == reset and r < remaining then
    remaining = r
  end
end
if h > hold then hold = h end
redis.call('HSET', KEYS[1], 'limit', text(limit), 'remaining', text(remaining),
           'reset', text(reset), 'hold', text(hold))
redis.call('EXPIRE', KEYS[1], 7200)
return {text(limit), text(remaining), text(reset), text(hold)}
"""


class _Quota(Protocol):
    @property
    def limit(self) -> int | None: ...
    @property
    def remaining(self) -> int | None: ...
    @property
    def reset(self) -> float | None: ...


class SharedGate(Protocol):
    """What of ``agent.github.ratelimit.RateLimitGate`` the sharing uses."""

    @property
    def quota(self) -> _Quota: ...
    @property
    def hold_until(self) -> float: ...
    def merge(
        self, limit: int | None, remaining: int | None, reset: float | None, hold_until: float
    ) -> None: ...


def _text(value: float | None) -> str:
    return "" if value is None else repr(value)


def _int(value: str) -> int | None:
    return int(float(value)) if value else None


async def sync_rate_limits(fleet: FleetRedis, gates: Mapping[str, SharedGate]) -> int:
    """One exchange for every gate, in one round trip; returns how many were merged."""
    items = list(gates.items())
    if not items:
        return 0

    def exchange(client: redis.Redis[str]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for key, gate in items:
            q = gate.quota
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", _MERGE, 1, fleet.key("ratelimit", key),
                _text(q.limit), _text(q.remaining), _text(q.reset), repr(gate.hold_until),
            )  # fmt: skip
        return pipe.execute()

    results = await fleet.run(exchange)
    for (_, gate), (limit, remaining, reset, hold) in zip(items, results, strict=True):
        gate.merge(_int(limit), _int(remaining), float(reset) if reset else None, float(hold))
    return len(items)


async def share_rate_limits(
    fleet: FleetRedis,
    gates: Callable[[], Mapping[str, SharedGate]],
    *,
    interval: float = SYNC_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``sync_rate_limits`` every ``interval`` until cancelled; Redis away skips a round."""
    task_status.started()
    while True:
        try:
            await sync_rate_limits(fleet, gates())
        except RedisUnavailable as exc:
            log.debug("fleet: rate limits not shared this round: %s", exc)
        await trio.sleep(interval)
