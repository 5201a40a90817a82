"""Prometheus metrics: one registry per daemon (never the global one), served on its own listener.

``Metrics`` is created by the daemon. Events only the pool supervisor sees (a container started,
a job started or ended) reach it through ``PoolObserver`` (agent/container/lifecycle.py), which
``Metrics`` implements. Everything that is a *state* (queue depth, runners,
container usage, rate limit, Docker reachability, last reload) is read by ``Sampler`` from the
objects that own it every ``SAMPLE_INTERVAL`` seconds; counters other services keep are exposed
as they are at scrape time (``agent.operations.CounterView``); GitHub requests are counted by a
wrapper around the client's HTTP transport and warnings/errors by a logging handler. So the
services that do the work carry no metrics code.

Names follow Prometheus conventions: ``gantryd_`` prefix, base units (seconds, bytes), ``_total``
only on counters, and labels with a bounded set of values (pool names come from the config;
never a job id or a runner name).
"""

from __future__ import annotations

import logging
import platform
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hypercorn.config
import hypercorn.trio
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from agent import __version__

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 5.0
# Histogram buckets (seconds) that fit what they measure (issue 7): a container start takes
# from a tenth of a second (warm: none at all) to minutes (an image pull); a job, from seconds
# to GitHub's 6-hour limit; a queue wait, from instant to hours when capacity is short.
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)
WAIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800, 21600)
# Endpoint classes of GitHub requests, first match wins (paths carry ids: never a label).
_ENDPOINTS = (
    ("installation_token", re.compile(r"^/app/installations/\d+/access_tokens$")),
    ("installation", re.compile(r"/installation$")),
    ("jitconfig", re.compile(r"/actions/runners/generate-jitconfig$")),
    ("runners", re.compile(r"/actions/runners(/\d+)?$")),
    ("jobs", re.compile(r"/actions/(runs|jobs)(/|$)")),
    ("check_runs", re.compile(r"/check-runs(/|$)")),
    ("statuses", re.compile(r"/statuses/")),
    ("deliveries", re.compile(r"/hooks/deliveries")),
)


def endpoint_class(path: str) -> str:
    """A bounded name for a GitHub REST path."""
    return next((name for name, pattern in _ENDPOINTS if pattern.search(path)), "other")


def component_of(logger_name: str) -> str:
    """``agent.container.pool_manager`` -> ``pool_manager``; foreign loggers by their package."""
    parts = logger_name.split(".")
    return parts[-1] if parts[0] == "agent" else parts[0]


class Metrics:
    """Every gantryd metric, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_jobs = Gauge(
            "gantryd_queue_jobs",
            "Queue entries by pool, state and priority (priority only for ready entries).",
            ["pool", "state", "priority"],
            registry=r,
        )
        self.runners = Gauge(
            "gantryd_runners",
            "Runners of this host by pool and state.",
            ["pool", "state"],
            registry=r,
        )
        self.container_memory = Gauge(
            "gantryd_container_memory_usage_bytes",
            "Memory in use by the runner containers of a pool.",
            ["pool"],
            registry=r,
        )
        self.container_cpu = Gauge(
            "gantryd_container_cpu_usage_ratio",
            "CPU in use by the runner containers of a pool, in cores (1.0 = one core busy).",
            ["pool"],
            registry=r,
        )
        self.github_requests = Counter(
            "gantryd_github_requests",
            "GitHub REST requests by endpoint class and HTTP status (error: no answer).",
            ["endpoint", "status"],
            registry=r,
        )
        self.github_rate_limit = Gauge(
            "gantryd_github_rate_limit_remaining",
            "Requests left in GitHub's current rate-limit window (last answer seen).",
            registry=r,
        )
        self.errors = Counter(
            "gantryd_errors",
            "Warnings and errors logged, by component and severity.",
            ["component", "severity"],
            registry=r,
        )
        self.docker_up = Gauge(
            "gantryd_docker_up", "1 if the Docker Engine answered the last ping.", registry=r
        )
        self.scheduler_paused = Gauge(
            "gantryd_scheduler_paused", "1 while draining (no new jobs are started).", registry=r
        )
        self.reload_ok = Gauge(
            "gantryd_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried).",
            registry=r,
        )
        self.reload_at = Gauge(
            "gantryd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=r,
        )
        self.jobs = Counter(
            "gantryd_jobs",
            "Jobs served by this host's runners that ended, by pool and outcome (GitHub's "
            "conclusion, or dead: dead-lettered by gantryd).",
            ["pool", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "gantryd_job_queue_wait_seconds",
            "From a job's enqueue until a runner of this host took it (in_progress).",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "gantryd_job_duration_seconds",
            "From a job's in_progress until its completed, for jobs this host's runners ran.",
            ["pool"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.container_start = Histogram(
            "gantryd_container_start_duration_seconds",
            "From a job's claim until its runner is ready: cold = container created and "
            "running, warm = handed to an idle warm runner.",
            ["pool", "kind"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "gantryd_build_info",
            "Always 1; labels say what runs.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

        self._webhooks: WebhooksReceived | None = None

    def watch_webhooks(self, read: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        """Expose intake's count of deliveries by (event, action, outcome), read at scrape
        time; a later call (a restarted intake) replaces the earlier source."""
        if self._webhooks is not None:
            self.registry.unregister(self._webhooks)
        self._webhooks = WebhooksReceived(read)
        self.registry.register(self._webhooks)

    # -- events (called by the services that see them) ------------------------------------

    def github_request(self, path: str, status: int | None) -> None:
        self.github_requests.labels(endpoint_class(path), str(status or "error")).inc()

    # PoolObserver: label values come from the config (pool) and closed sets (kind, outcome).

    def container_started(self, pool: str, kind: str, seconds: float) -> None:
        self.container_start.labels(pool, str(kind)).observe(seconds)

    def job_started(self, pool: str, queue_wait: float) -> None:
        self.queue_wait.labels(pool).observe(queue_wait)

    def job_ended(self, pool: str, outcome: str, duration: float | None) -> None:
        self.jobs.labels(pool, outcome).inc()
        if duration is not None:
            self.job_duration.labels(pool).observe(duration)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WebhooksReceived(Collector):
    """``gantryd_webhooks_received_total{event,action,outcome}`` from intake's own counter
    (``agent.orchestrator.webhook.IntakeStats.received``): intake only increments it, and
    bounds event and action to GitHub's known values, so no label grows without limit."""

    def __init__(self, read: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gantryd_webhooks_received",
            "Webhook deliveries received, by event, action and what came of them.",
            labels=["event", "action", "outcome"],
        )
        for labels, count in sorted(self._read().items()):
            family.add_metric(list(labels), count)
        yield family


class ErrorCounter(logging.Handler):
    """Counts WARNING and ERROR records per component: "errors by component" with no hooks."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.WARNING)
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        severity = "error" if record.levelno >= logging.ERROR else "warning"
        self._metrics.errors.labels(component_of(record.name), severity).inc()


# -- container usage from cgroups -------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    memory: int  # bytes
    cpu_seconds: float  # cumulative


# Where Docker puts a container's cgroup: v2 (systemd or cgroupfs driver), then v1.
_CGROUP_V2 = ("system.slice/docker-{id}.scope", "docker/{id}")
_CGROUP_V1 = ("system.slice/docker-{id}.scope", "docker/{id}")


def read_usage(container_id: str, root: Path = Path("/sys/fs/cgroup")) -> Usage | None:
    """Memory and CPU of one container from its cgroup files; None if not found (gone)."""
    try:
        for pattern in _CGROUP_V2:
            base = root / pattern.format(id=container_id)
            if (base / "memory.current").exists():
                memory = int((base / "memory.current").read_text())
                stat = dict(
                    line.split() for line in (base / "cpu.stat").read_text().splitlines() if line
                )
                return Usage(memory, int(stat["usage_usec"]) / 1e6)
        for pattern in _CGROUP_V1:
            rel = pattern.format(id=container_id)
            memory_file = root / "memory" / rel / "memory.usage_in_bytes"
            if memory_file.exists():
                cpu_ns = int((root / "cpuacct" / rel / "cpuacct.usage").read_text())
                return Usage(int(memory_file.read_text()), cpu_ns / 1e9)
    except (OSError, ValueError, KeyError):
        return None  # the container went away while we read
    return None


@dataclass(frozen=True)
class ContainerLoad:
    memory: int  # bytes
    cpu: float  # cores in use since the previous sample


class UsageTracker:
    """Per-container memory and CPU rate, from successive cgroup readings."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup")) -> None:
        self._root = root
        self._last: dict[str, tuple[float, Usage]] = {}
        self.load: dict[str, ContainerLoad] = {}

    def sample_blocking(self, container_ids: Iterable[str], now: float) -> dict[str, ContainerLoad]:
        """Read every container (blocking file reads: run in a thread); forget the gone ones."""
        last, self._last, load = self._last, {}, {}
        for cid in container_ids:
            usage = read_usage(cid, self._root)
            if usage is None:
                continue
            self._last[cid] = (now, usage)
            before = last.get(cid)
            cpu = 0.0
            if before is not None and now > before[0]:
                cpu = max(0.0, (usage.cpu_seconds - before[1].cpu_seconds) / (now - before[0]))
            load[cid] = ContainerLoad(usage.memory, cpu)
        self.load = load
        return load


# -- the sampler ------------------------------------------------------------------------------


class _RunnerLike(Protocol):
    @property
    def pool(self) -> str: ...
    @property
    def state(self) -> Any: ...
    @property
    def container_id(self) -> str | None: ...


@dataclass
class Sources:
    """Where the sampler reads state; each is a plain call into the object that owns it."""

    runners: Callable[[], Iterable[_RunnerLike]]
    queue_counts: Callable[[], Awaitable[Any]]  # JobQueue.counts
    pools: Callable[[], Iterable[str]]  # pool names of the live config
    rate_limit_remaining: Callable[[], int | None]
    docker_ping: Callable[[], Awaitable[None]]
    paused: Callable[[], bool]
    reload_state: Callable[[], tuple[bool, float]]  # (last reload ok, last success time)


class Sampler:
    """Copies state into gauges every ``interval`` seconds; ``sample_once`` is one pass."""

    def __init__(
        self, metrics: Metrics, sources: Sources, *, usage: UsageTracker | None = None
    ) -> None:
        self._m = metrics
        self._s = sources
        self.usage = usage or UsageTracker()
        self.last_counts: Any = None

    async def run(
        self,
        *,
        interval: float = SAMPLE_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample until cancelled; a failing source is logged and the rest still sampled."""
        await self.sample_once()
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.sample_once()

    async def sample_once(self) -> None:
        m, s = self._m, self._s
        pools = list(s.pools())
        await self._sample_queue(pools)
        runners = list(s.runners())
        m.runners.clear()
        for pool in pools:
            m.runners.labels(pool, "idle")  # present at 0 so dashboards see every pool
        for runner in runners:
            m.runners.labels(runner.pool, str(runner.state)).inc()
        by_id = {r.container_id: r.pool for r in runners if r.container_id}
        load = await trio.to_thread.run_sync(self.usage.sample_blocking, list(by_id), time.time())
        m.container_memory.clear()
        m.container_cpu.clear()
        for pool in pools:
            m.container_memory.labels(pool).set(0)
            m.container_cpu.labels(pool).set(0)
        for cid, used in load.items():
            m.container_memory.labels(by_id[cid]).inc(used.memory)
            m.container_cpu.labels(by_id[cid]).inc(used.cpu)
        remaining = s.rate_limit_remaining()
        if remaining is not None:
            m.github_rate_limit.set(remaining)
        m.scheduler_paused.set(1 if s.paused() else 0)
        ok, at = s.reload_state()
        m.reload_ok.set(1 if ok else 0)
        m.reload_at.set(at)
        try:
            with trio.fail_after(SAMPLE_INTERVAL):
                await s.docker_ping()
        except Exception as exc:  # any failure to answer means "down" for this metric
            log.debug("docker ping failed: %s", exc)
            m.docker_up.set(0)
        else:
            m.docker_up.set(1)

    async def _sample_queue(self, pools: list[str]) -> None:
        try:
            counts = await self._s.queue_counts()
        except Exception as exc:  # the queue logs its own failures; keep the old values
            log.warning("metrics: cannot read queue counts: %s", exc)
            return
        self.last_counts = counts
        gauge = self._m.queue_jobs
        gauge.clear()
        for pool in pools:
            gauge.labels(pool, "queued", "")
        for (pool, state), n in counts.by_pool_state.items():
            if str(state) not in ("done", "cancelled"):  # dead stays until pruned: alert on it
                gauge.labels(pool, str(state), "").set(n)
        for (pool, priority), n in counts.ready_by_pool_priority.items():
            gauge.labels(pool, "ready", str(priority)).set(n)


# -- the HTTP listener -------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class MetricsApp:
    """ASGI app: GET /metrics returns the exposition; everything else 404."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":  # hypercorn's trio worker needs the protocol answered
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            # 0.0.4: what Prometheus 2.x (Debian 12) and every scraper understand; names are
            # plain ASCII, so the output is the same.
            status, body, ctype = 200, self._metrics.exposition(), CONTENT_TYPE_PLAIN_0_0_4
        else:
            status, body, ctype = 404, b"not found; metrics are at /metrics\n", "text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def serve_metrics(
    metrics: Metrics,
    listen: str,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics on ``listen`` until cancelled; started() with the bound URLs."""
    config = hypercorn.config.Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    await hypercorn.trio.serve(MetricsApp(metrics), config, task_status=task_status)  # type: ignore[arg-type]
