"""The operator's side of a running daemon: metrics (listener and sampler), the admin socket, and
systemd's watchdog and STATUS= line, started together as one service of the root nursery.

Each reads the daemon's own objects (``Services``); nothing here changes how jobs are served,
except the admin socket's drain/resume, cancel/retry and GC, which an operator asks for.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.container.docker_api import DockerAPI
from agent.container.gc import collect_garbage
from agent.container.lifecycle import Outcome
from agent.container.pool_manager import PoolManager
from agent.fleet.hosts import Hosts
from agent.github.client import GitHubClient
from agent.ops.admin_server import AdminApp, serve_admin
from agent.ops.metrics import CounterView, ErrorCounter, Metrics
from agent.ops.metrics_server import serve_metrics
from agent.ops.sampler import Sampler, Sources
from agent.orchestrator.listener import Listener, ListenerState
from agent.orchestrator.scheduler import Scheduler
from agent.orchestrator.webhook import WebhookApp
from agent.queue.base import JobQueue
from agent.reload import LiveConfig
from agent.secrets import SecretStore
from agent.systemd import Notifier

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the operator's side reads: the daemon's running objects."""

    live: LiveConfig
    queue: JobQueue
    scheduler: Scheduler
    pools: PoolManager
    github: GitHubClient
    docker: DockerAPI
    intake: WebhookApp
    notifier: Notifier
    secrets: SecretStore | None
    instance: str
    listeners: tuple[Listener, ...] = ()  # one per scale-set pool
    hosts: Hosts | None = None  # the fleet's host records (Redis backend)


def status_line(services: Services, sampler: Sampler) -> str:
    """The STATUS= text: what systemctl status shows under the unit."""
    runners = Counter(str(r.state) for r in services.pools.runners())
    counts = sampler.last_counts
    queued = 0 if counts is None else sum(n for s, n in counts.by_state.items() if s == "queued")
    text = f"running {runners['busy']}, queued {queued}, idle {runners['idle']}"
    if services.scheduler.paused:
        text += "; draining"
    if not services.live.last_reload_ok:
        text += "; last reload failed, old config in force"
    return text


async def collect_garbage_now(services: Services) -> list[str]:
    """``gantryd gc``: the pool supervisor's GC pass, run at once; the names it removed.

    The same pass as ``PoolManager.collect_garbage`` (this instance's labelled objects that no
    runner of this process owns, or past their expiry), called here because that method only
    returns a count; counted in the same ``gc_removed`` outcome."""
    collected = await collect_garbage(
        services.docker,
        instance=services.instance,
        known={r.name for r in services.pools.runners()},
        now=time.time(),
    )
    services.pools.stats.outcomes[Outcome.GC_REMOVED] += collected.total
    return [*collected.containers, *collected.volumes, *collected.networks]


class ListenerMetrics(Collector):
    """``gantryd_listener_up{pool}`` (1 while the session is open and polled), messages
    handled, jobs queued, and the scale set's assigned jobs and runner target, per pool."""

    def __init__(self, listeners: Sequence[Listener]) -> None:
        self._listeners = listeners

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "gantryd_listener_up", "1 while the pool's scale-set session is open.", labels=["pool"]
        )
        messages = CounterMetricFamily(
            "gantryd_listener_messages", "Scale-set messages handled.", labels=["pool"]
        )
        jobs = CounterMetricFamily(
            "gantryd_listener_jobs_queued", "Jobs the listener queued.", labels=["pool"]
        )
        target = GaugeMetricFamily(
            "gantryd_listener_target_runners",
            "min(max_runners, totalAssignedJobs + min_idle) of the scale set.",
            labels=["pool"],
        )
        for listener in self._listeners:
            status = listener.status
            up.add_metric([status.pool], float(status.state is ListenerState.LISTENING))
            messages.add_metric([status.pool], status.messages)
            jobs.add_metric([status.pool], status.jobs_enqueued)
            target.add_metric([status.pool], status.target)
        yield from (up, messages, jobs, target)


def _register_views(metrics: Metrics, services: Services) -> None:
    pools, intake = services.pools, services.intake
    if services.listeners:
        metrics.registry.register(ListenerMetrics(services.listeners))
    metrics.registry.register(
        CounterView(
            "gantryd_webhook_answers",
            "Webhook deliveries answered, by HTTP status.",
            "status",
            lambda: intake.stats.answers,
        )
    )
    metrics.registry.register(
        CounterView(
            "gantryd_webhooks_ignored",
            "Deliveries that changed nothing, by reason (event, no_pool, duplicate, ...).",
            "reason",
            lambda: intake.stats.ignored,
        )
    )
    metrics.registry.register(
        CounterView(
            "gantryd_runner_outcomes",
            "What happened to runners (created, warm_hit, oom_killed, job_timeout, ...).",
            "outcome",
            lambda: pools.stats.outcomes,
        )
    )


async def run_operations(
    services: Services,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Metrics listener and sampler, admin socket, watchdog; started() with the metrics URL."""
    config = services.live.current
    _register_views(metrics, services)
    sampler = Sampler(
        metrics,
        Sources(
            runners=services.pools.runners,
            queue_counts=services.queue.counts,
            pools=lambda: [p.name for p in services.live.current.pools],
            rate_limit_remaining=lambda: services.github.rate_limit_remaining,
            docker_ping=services.docker.ping,
            paused=lambda: services.scheduler.paused,
            reload_state=lambda: (services.live.last_reload_ok, services.live.last_reload_at),
            outdated_pools=lambda: services.pools.stats.outdated,
        ),
    )
    admin = AdminApp(
        live=services.live,
        queue=services.queue,
        scheduler=services.scheduler,
        pools=services.pools,
        instance=services.instance,
        usage=sampler.usage,
        secrets=services.secrets,
        gc=partial(collect_garbage_now, services),
        started_at=time.time(),
        listeners={x.pool_name: x.status for x in services.listeners},
        hosts=services.hosts,
    )
    errors = ErrorCounter(metrics)
    logging.getLogger().addHandler(errors)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sampler.run)
            binds = await nursery.start(serve_metrics, metrics, config.server.metrics_listen)
            await nursery.start(serve_admin, admin, config.server.runtime_dir)
            status = partial(status_line, services, sampler)
            await nursery.start(services.notifier.keep_alive, status)
            task_status.started(binds[0] + "/metrics")
    finally:
        logging.getLogger().removeHandler(errors)
