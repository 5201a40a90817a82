"""Which host owns which runner, and which hosts have a stake in which job: fleet-shared state.

Written where the pool manager already writes every runner change, the local runner store
(``OwnedRunnerStore`` wraps ``save``/``delete``), so nothing in the pool manager knows of the
fleet. A runner's row is saved before its GitHub registration (``agent.container.store``), so
its owner is in Redis before GitHub could hand it a job, and no webhook can name it earlier.

Keys (under the queue's hash tag): ``fleet:runners`` hash runner name -> host;
``fleet:job:<id>`` set of hosts with a runner made for that job or that ran it (expires after
``JOB_TTL``: a job's events come within hours; the set is only a routing hint).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis

from agent.container.lifecycle import Runner
from agent.container.store import RunnerStore
from agent.db import Database
from agent.fleet.stream_redis import StreamRedis

JOB_TTL = 7 * 24 * 3600  # seconds a job's host set is kept after its last write


class Ownership:
    """Writes this host's claims on runners and jobs."""

    def __init__(
        self,
        redis_: StreamRedis,
        host: str,
        *,
        staked: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis_
        self.host = host
        self._staked = staked  # hears of each job this host newly has a runner made for
        self._written: dict[str, int | None] = {}  # runner -> made_for already written

    async def claim(self, name: str, made_for: int | None) -> None:
        """Record that runner ``name`` (and the job it was made for) is this host's; a no-op
        when nothing changed since the last write, so a runner's many saves cost one write."""
        if name in self._written and self._written[name] == made_for:
            return
        runners, host = self._redis.key("runners"), self.host
        job_key = self._redis.key("job", made_for) if made_for is not None else None

        def write(client: redis.Redis[str]) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(runners, name, host)
            if job_key is not None:
                pipe.sadd(job_key, host)
                pipe.expire(job_key, JOB_TTL)
            pipe.execute()

        await self._redis.run(write)
        self._written[name] = made_for
        if made_for is not None and self._staked is not None:
            await self._staked(made_for)

    async def release(self, name: str) -> None:
        """The runner is gone (no container, no registration): drop its owner."""
        self._written.pop(name, None)
        runners = self._redis.key("runners")
        await self._redis.run(lambda client: client.hdel(runners, name))

    async def owner(self, name: str) -> str | None:
        runners = self._redis.key("runners")
        return await self._redis.run(lambda client: client.hget(runners, name))


class OwnedRunnerStore(RunnerStore):
    """The local runner store that also tells the fleet which runners are this host's.

    The local row is written first (adoption after a crash reads it); the Redis write follows.
    A Redis error propagates as the store's own errors do (``QueueError``): the registry logs
    it and the runner's next save writes both again.
    """

    def __init__(
        self, db: Database, *, ownership: Ownership, clock: Callable[[], float] | None = None
    ) -> None:
        if clock is None:
            super().__init__(db)
        else:
            super().__init__(db, clock=clock)
        self._ownership = ownership

    async def save(self, runner: Runner) -> None:
        await super().save(runner)
        await self._ownership.claim(runner.name, runner.made_for)

    async def delete(self, name: str) -> None:
        await super().delete(name)
        await self._ownership.release(name)
