"""What the fleet services of one idle host cost Redis: round trips and server-side commands.

    .venv/bin/python bench/fleet_overhead.py [--seconds 30]

Runs this host's part of a fleet (both leases held, the heartbeat with its host list, the
rate-limit exchange of two credentials) against a redis-server of its own on loopback, and
counts the round trips the client sent and the commands the server ran (INFO stats, which
includes the commands inside scripts) over the span. A single host on SQLite runs none of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import shutil
import subprocess
import tempfile
import time
from typing import Any

import redis
import trio

from agent.fleet.connection import redis_client
from agent.fleet.handle import FleetRedis
from agent.fleet.hosts import HostRecord, Hosts
from agent.fleet.leases import CHORES, Lease
from agent.fleet.ratelimits import share_rate_limits
from agent.github.ratelimit import RateLimitGate
from bench.support import free_port


class CountingFleet(FleetRedis):
    """Counts ``run`` calls: each is one round trip (a pipeline is one too)."""

    calls = 0

    async def run(self, fn: Any) -> Any:
        self.calls += 1
        return await super().run(fn)


def snapshot(now: float) -> HostRecord:
    return HostRecord(
        host="bench-1", version="bench", pools=(), runners=0, max_runners=10,
        drained=False, started_at=now, heartbeat_at=now,
    )  # fmt: skip


async def measure(port: int, seconds: float) -> None:
    fleet = CountingFleet(redis_client(f"redis://127.0.0.1:{port}/0"), prefix="bench")
    gates = {"token bench": RateLimitGate(), "installation 1": RateLimitGate()}
    probe = redis.Redis(port=port)
    async with trio.open_nursery() as nursery:
        for chore in CHORES:
            await nursery.start(Lease(fleet, chore, host="bench-1").hold)
        await nursery.start(Hosts(fleet, host="bench-1").beat, snapshot)
        await nursery.start(share_rate_limits, fleet, lambda: gates)
        await trio.sleep(2.0)  # past the first takes and beats
        commands, trips, t0 = (
            probe.info("stats")["total_commands_processed"],
            fleet.calls,
            time.monotonic(),
        )
        await trio.sleep(seconds)
        span = time.monotonic() - t0
        commands = probe.info("stats")["total_commands_processed"] - commands - 1  # less INFO
        trips = fleet.calls - trips
        nursery.cancel_scope.cancel()
    probe.close()
    await fleet.aclose()
    print(f"idle host, {span:.1f} s: {trips} round trips ({trips / span:.2f}/s), "
          f"{commands} server commands ({commands / span:.2f}/s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port).ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        sys.exit("redis-server did not start")
                    time.sleep(0.02)  # polling the server's readiness, bounded by the deadline
            trio.run(measure, port, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
