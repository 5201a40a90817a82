"""Prometheus metrics: one registry per daemon (never the global one), served on its own listener.

``Metrics`` is created by the daemon. Events only the pool supervisor sees (a container started,
a job started or ended) reach it through ``PoolObserver`` (agent/container/lifecycle.py), which
``Metrics`` implements. Everything that is a *state* (queue depth, runners,
container usage, rate limit, Docker reachability, last reload) is read by
``agent.ops.sampler.Sampler`` from the objects that own it; counters other services keep are
exposed as they are at scrape time (``CounterView``); GitHub requests are counted by a wrapper
around the client's HTTP transport (``CountingTransport``) and warnings/errors by a logging
handler (``ErrorCounter``). So the services that do the work carry no metrics code; the listener
is ``agent.ops.metrics_server``.

Names follow Prometheus conventions: ``gantryd_`` prefix, base units (seconds, bytes), ``_total``
only on counters, and labels with a bounded set of values (pool names come from the config;
never a job id or a runner name).
"""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent import __version__

log = logging.getLogger(__name__)

# Histogram buckets (seconds) that fit what they measure: a container start takes
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
            "Memory in use by the runner containers of a pool (with their Docker sidecars).",
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
        self.pool_image_outdated = Gauge(
            "gantryd_pool_image_outdated",
            "1 while GitHub refuses the pool's runner version (exit 7): its jobs are held.",
            ["pool"],
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
            "running, warm = handed to an idle warm runner; dind = a runner's Docker sidecar "
            "from its start until its daemon listens.",
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
        self._connections: IntakeConnections | None = None

    def watch_webhooks(self, read: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        """Expose intake's count of deliveries by (event, action, outcome), read at scrape
        time; a later call (a restarted intake) replaces the earlier source."""
        if self._webhooks is not None:
            self.registry.unregister(self._webhooks)
        self._webhooks = WebhooksReceived(read)
        self.registry.register(self._webhooks)

    def watch_connections(self, read: Callable[[], tuple[int, int]]) -> None:
        """Expose intake's open connections and how many idle ones its admission cut to admit
        newer ones (``server.max_connections``), read at scrape time as ``(open, cut)``."""
        if self._connections is not None:
            self.registry.unregister(self._connections)
        self._connections = IntakeConnections(read)
        self.registry.register(self._connections)

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
    (``agent.orchestrator.intake_http.IntakeStats.received``): intake only increments it, and
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


class IntakeConnections(Collector):
    """``gantryd_intake_connections`` (open now) and ``gantryd_intake_connections_cut_total``
    from intake's admission (agent/orchestrator/admission.py)."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        open_now, cut = self._read()
        yield GaugeMetricFamily(
            "gantryd_intake_connections",
            "Intake connections open now (at most server.max_connections).",
            value=open_now,
        )
        yield CounterMetricFamily(
            "gantryd_intake_connections_cut",
            "Idle intake connections closed to admit newer ones at server.max_connections.",
            value=cut,
        )


class ErrorCounter(logging.Handler):
    """Counts WARNING and ERROR records per component: "errors by component" with no hooks."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.WARNING)
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        severity = "error" if record.levelno >= logging.ERROR else "warning"
        self._metrics.errors.labels(component_of(record.name), severity).inc()


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts GitHub requests by endpoint class and status, around the real transport, so the
    GitHub client needs no metrics code: pass it as the client's ``transport``."""

    def __init__(self, metrics: Metrics, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._metrics = metrics
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError:
            self._metrics.github_request(request.url.path, None)
            raise
        self._metrics.github_request(request.url.path, response.status_code)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class CounterView(Collector):
    """Exposes plain counters another service keeps (``collections.Counter``) as a Prometheus
    counter at scrape time: the owner only ever increments, we never copy or reset."""

    def __init__(
        self, name: str, doc: str, label: str, read: Callable[[], Mapping[Any, int]]
    ) -> None:
        self._name, self._doc, self._label, self._read = name, doc, label, read

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for key, value in sorted(self._read().items(), key=lambda kv: str(kv[0])):
            family.add_metric([str(key)], value)
        yield family
