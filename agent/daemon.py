"""``gantryd serve``: one trio.run whose root nursery owns every long-lived service.

Services (each runs until cancelled, started with ``nursery.start`` so READY=1 is only sent
once all of them are truly up): the pool manager with its Docker event watcher, the scheduler,
the status reporter, the reconciler and the HTTP intake. Signals: SIGHUP reloads the
configuration and the credentials it names (the old ones stay on any error); SIGTERM/SIGINT
stop intake and scheduling and exit 0, leaving runner containers running (docs/design.md §2).
"""

from __future__ import annotations

import logging
import re
import resource
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import hypercorn.config
import trio

from agent import __version__
from agent.config import EX_CONFIG, Config, ConfigError, PoolSource, ServerConfig
from agent.container.docker_api import DockerAPI
from agent.container.events import JobEvent
from agent.container.lifecycle import LIVE_STATES
from agent.container.pool_manager import PoolManager
from agent.container.store import RunnerStore, open_runner_store
from agent.fleet.hosts import HostRecord, PoolLoad
from agent.fleet.ratelimits import share_rate_limits
from agent.github.auth import CredentialsError, Secret
from agent.github.client import GitHubClient
from agent.github.credentials import Credentials, load_credentials
from agent.ops.metrics import CountingTransport, Metrics
from agent.ops.services import Services, run_operations
from agent.orchestrator.admission import Admission, serve_admitted
from agent.orchestrator.health import (
    credentials_loaded,
    docker_answering,
    listeners_listening,
    queue_writable,
)
from agent.orchestrator.listener import CursorStore, Listener, open_cursor_store
from agent.orchestrator.reconciler import Reconciler, SeenRepositories
from agent.orchestrator.scheduler import Scheduler, Wakeup
from agent.orchestrator.status_reporter import StatusReporter
from agent.orchestrator.webhook import WebhookApp
from agent.queue import open_queue
from agent.queue.base import JobQueue
from agent.reload import LiveConfig
from agent.secrets import SecretStore, open_secret_store
from agent.startup import StartupError, check_directories, connect_docker, opened
from agent.systemd import Notifier

if TYPE_CHECKING:  # annotations only: a single host never imports the fleet's streams (redis-py)
    from agent.fleet.membership import Fleet

log = logging.getLogger(__name__)

JOB_EVENTS_BUFFER = 256
DRAIN_FILE = "drained"  # in state_dir while drained: survives restarts and crashes
HTTP_GRACEFUL_TIMEOUT = 3.0
FD_RESERVE = 128  # descriptors kept for everything but intake connections


@asynccontextmanager
async def open_fleet_if_shared(config: Config, queue: JobQueue) -> AsyncIterator[Fleet | None]:
    """This host's part in a fleet with the Redis backend (``agent.fleet``); None with SQLite
    (a single host: nothing of it is opened or imported, no task runs)."""
    if config.queue.backend != "redis":
        yield None
        return
    from agent.fleet.membership import open_fleet

    async with open_fleet(config, instance_name(config), queue) as fleet:
        yield fleet


def instance_name(config: Config) -> str:
    """This host's name in runner names and container labels (DNS-label safe)."""
    raw = config.server.instance or socket.gethostname()
    return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:32] or "host"


def connection_limit(configured: int) -> int:
    """``server.max_connections``, lowered to what the open-files limit leaves after
    ``FD_RESERVE`` descriptors for everything else (databases, Docker, GitHub, /metrics)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured <= soft - FD_RESERVE:
        return configured
    limit = max(1, soft - FD_RESERVE)
    log.warning(
        "server.max_connections = %d is above what the open-files limit (%d) leaves for intake; "
        "admitting %d (raise LimitNOFILE / ulimit -n to admit more)",
        configured,
        soft,
        limit,
    )
    return limit


async def serve_http(
    app: WebhookApp,
    server: ServerConfig,
    *,
    admission: Admission | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the intake app on ``server.listen`` with hypercorn's trio protocol, its
    connections admitted by ``admission`` (agent/orchestrator/admission.py; default: one for
    ``server``); started() with the bound URLs. When ``shutdown_trigger`` returns, it stops
    accepting and returns once the requests in flight are answered (at most
    ``HTTP_GRACEFUL_TIMEOUT`` later).

    The admission bounds a request's headers by ``server.read_timeout`` and the app bounds its
    body and answer, so hypercorn's per-read timeout is off: it would also cut idle keep-alive
    connections, which stay ``server.keep_alive_timeout`` (hypercorn's idle timer).
    """
    config = hypercorn.config.Config()
    config.bind = [server.listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = HTTP_GRACEFUL_TIMEOUT
    config.read_timeout = None
    config.keep_alive_timeout = server.keep_alive_timeout
    await serve_admitted(
        app,
        config,
        admission or intake_admission(server),
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )


def intake_admission(server: ServerConfig) -> Admission:
    """The admission of ``server``'s intake: its connection cap (within RLIMIT_NOFILE) and its
    deadline for a request's headers."""
    return Admission(connection_limit(server.max_connections), header_timeout=server.read_timeout)


@dataclass
class Daemon:
    """The running services of one ``gantryd serve``."""

    live: LiveConfig
    notifier: Notifier
    docker_url: str | None = None
    exit_settle: float = 30.0
    pools: PoolManager | None = None
    scheduler: Scheduler | None = None
    queue: JobQueue | None = None
    reconciler: Reconciler | None = None
    intake: WebhookApp | None = None
    metrics: Metrics = field(default_factory=Metrics)
    secret_store: SecretStore | None = None
    metrics_url: str | None = None
    github: GitHubClient | None = None
    credentials: Credentials | None = None  # in force; a reload replaces them
    listeners: list[Listener] = field(default_factory=list)  # one per scale-set pool
    admission: Admission | None = None  # intake's open connections (server.max_connections)
    fleet: Fleet | None = None  # with the Redis backend
    _started_at: float = field(default_factory=time.time)
    _intake_stop: trio.Event = field(default_factory=trio.Event)
    _intake_done: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every service; started() with the intake URL once all are ready."""
        config = self.live.current
        try:
            self.credentials = credentials = load_credentials(config.github)
        except CredentialsError as exc:
            raise StartupError(str(exc), exit_status=EX_CONFIG) from exc
        await trio.to_thread.run_sync(check_directories, config.server)
        docker = await connect_docker(self.docker_url)
        try:
            async with (
                opened("the queue", open_queue(config)) as queue,
                opened("the fleet state", open_fleet_if_shared(config, queue)) as self.fleet,
                opened(
                    "the runner store",
                    open_runner_store(
                        config.server.state_dir,
                        store=self.fleet.runner_store if self.fleet is not None else None,
                    ),
                ) as store,
                opened(
                    "the secrets store",
                    open_secret_store(
                        config.server.state_dir,
                        fleet=self.fleet.redis if self.fleet is not None else None,
                        host=instance_name(config),
                    ),
                ) as self.secret_store,
                opened("the listener state", open_cursor_store(config.server.state_dir)) as cursors,
                GitHubClient(
                    config.github.api_url,
                    credentials.auth,
                    timeout=config.github.request_timeout,
                    max_concurrency=config.github.max_concurrency,
                    transport=CountingTransport(self.metrics),
                ) as github,
            ):
                self.github = github
                await self._run_services(config, queue, store, github, docker, cursors, task_status)
        finally:
            docker.close()

    async def _run_services(
        self,
        config: Config,
        q: JobQueue,
        store: RunnerStore,
        github: GitHubClient,
        docker: DockerAPI,
        cursors: CursorStore,
        task_status: trio.TaskStatus[str],
    ) -> None:
        self.queue = q
        wakeup = Wakeup()
        send_events, receive_events = trio.open_memory_channel[JobEvent](JOB_EVENTS_BUFFER)
        fleet = self.fleet
        if fleet is not None:  # intake's events go through Redis to the runner's own host
            produced, to_route = trio.open_memory_channel[JobEvent](JOB_EVENTS_BUFFER)
        else:
            produced = send_events
        self.listeners = [
            Listener(
                pool,
                live=self.live,
                queue=q,
                github=github,
                cursors=cursors,
                job_events=produced.clone(),
                on_enqueue=wakeup.set,
                owner=instance_name(config),
            )
            for pool in config.pools
            if pool.source is PoolSource.SCALE_SET
        ]
        self.pools = PoolManager(
            live=self.live,
            queue=q,
            github=github,
            docker=docker,
            store=store,
            instance=instance_name(config),
            on_capacity=wakeup.set,
            exit_settle=self.exit_settle,
            secrets=self.secret_store,
            observer=self.metrics,
            jit_sources={x.pool_name: x.generate_jit_config for x in self.listeners},
            fleet_sweep=self.fleet.sweep_turn if self.fleet is not None else None,
        )
        drain_file = config.server.state_dir / DRAIN_FILE
        self.scheduler = Scheduler(
            live=self.live,
            queue=q,
            pools=self.pools,
            wakeup=wakeup,
            drain_file=drain_file,
            drained=await trio.to_thread.run_sync(drain_file.exists),
        )
        if self.scheduler.paused:
            log.warning("drained (%s exists): taking no jobs until `gantryd resume`", drain_file)
        seen = SeenRepositories()
        self.reconciler = Reconciler(
            live=self.live,
            queue=q,
            github=github,
            seen=seen,
            runner_store=store,
            leader=fleet.reconciler if fleet is not None else None,
        )
        self.intake = app = WebhookApp(
            live=self.live,
            queue=q,
            secrets=self._webhook_secrets,
            job_events=produced,
            on_enqueue=wakeup.set,
            readiness={
                ("redis" if fleet is not None else "database"): queue_writable(q),
                "docker": docker_answering(docker),
                "credentials": credentials_loaded(
                    lambda: self.credentials,
                    webhooks=any(p.source is PoolSource.WEBHOOK for p in config.pools),
                ),
                **({"listeners": listeners_listening(self.listeners)} if self.listeners else {}),
            },
            on_repository=seen.add,
        )
        self.metrics.watch_webhooks(lambda: app.stats.received)
        async with produced, trio.open_nursery() as nursery:
            if fleet is not None:  # before the services whose chores the leases gate
                await nursery.start(fleet.reconciler.hold)
                await nursery.start(fleet.sweep.hold)
                await nursery.start(fleet.hosts.beat, self._host_record)
                await nursery.start(share_rate_limits, fleet.redis, lambda: github.shared_gates)
            await nursery.start(self.pools.run, receive_events, self.scheduler.job_taken)
            if fleet is not None:
                await nursery.start(fleet.events.follow, send_events)
                nursery.start_soon(fleet.events.forward, to_route)
            await nursery.start(self.scheduler.run)
            await nursery.start(
                StatusReporter(
                    queue=q,
                    github=github,
                    live=self.live,
                    instance=instance_name(config),
                    usage=store.usage,
                    holds=self.pools.hold_reason,
                    shared=fleet.reports if fleet is not None else None,
                ).run
            )
            await nursery.start(self.reconciler.run)
            for listener in self.listeners:
                await nursery.start(listener.run)
            binds = await nursery.start(self._serve_intake, app, config.server)
            url = binds[0].replace("0.0.0.0", "127.0.0.1")
            services = Services(
                self.live, q, self.scheduler, self.pools, github, docker, app, self.notifier,
                self.secret_store, instance_name(config), tuple(self.listeners),
                fleet.hosts if fleet is not None else None,
            )  # fmt: skip
            self.metrics_url = await nursery.start(run_operations, services, self.metrics)
            log.info("gantryd ready: intake on %s, %d pool(s)", url, len(config.pools))
            self.notifier.ready(f"serving on {url}")
            task_status.started(url)

    def _host_record(self, now: float) -> HostRecord:
        """This host's heartbeat: its pools' runners against their caps, its drain state."""
        config = self.live.current
        runners = [
            r for r in (self.pools.runners() if self.pools else []) if r.state in LIVE_STATES
        ]
        by_pool = Counter(r.pool for r in runners)
        return HostRecord(
            host=instance_name(config),
            version=__version__,
            pools=tuple(
                PoolLoad(name=p.name, runners=by_pool[p.name], max_runners=p.max_runners)
                for p in config.pools
            ),
            runners=len(runners),
            max_runners=config.scheduler.max_runners,
            drained=self.scheduler.paused if self.scheduler else False,
            started_at=self._started_at,
            heartbeat_at=now,
        )

    async def _serve_intake(
        self,
        app: WebhookApp,
        server: ServerConfig,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.admission = admission = intake_admission(server)
        self.metrics.watch_connections(lambda: (admission.stats.open, admission.stats.evicted))
        try:
            await serve_http(
                app,
                server,
                admission=self.admission,
                shutdown_trigger=self._intake_stop.wait,
                task_status=task_status,
            )
        finally:
            self._intake_done.set()

    async def stop_taking_work(self) -> None:
        """SIGTERM's first step: no new claims, no new webhooks; the requests in flight are
        answered (their enqueue committed). The caller then cancels the rest: writes already
        handed to the database finish first, runner containers are left running."""
        if self.scheduler is not None:
            self.scheduler.paused = True
        self._intake_stop.set()
        with trio.move_on_after(HTTP_GRACEFUL_TIMEOUT + 1.0):
            await self._intake_done.wait()

    def _webhook_secrets(self) -> tuple[Secret, ...]:
        return self.credentials.webhook_secrets if self.credentials is not None else ()

    def reload(self) -> bool:
        """SIGHUP: re-read the file and the credentials it names; apply all or nothing."""
        self.notifier.reloading()
        result = self.live.reload(self._prepare_reload)
        if not result.ok:
            status = f"reload failed, old config kept: {result.error}"
        elif result.needs_restart:
            status = f"reloaded; restart to apply {', '.join(result.needs_restart)}"
        else:
            status = "reloaded"
        self.notifier.ready(status)
        return result.ok

    def _prepare_reload(self, config: Config) -> Callable[[], None]:
        """Load the credentials ``config`` names (a file that cannot be loaded refuses the
        reload) and return the step that puts them in force with the live limits that services
        took at start: the GitHub client's timeout and concurrency, parallel provisioning."""
        try:
            credentials = load_credentials(config.github)
        except CredentialsError as exc:
            raise ConfigError(config.path, exc.key, exc.problem) from exc

        def apply() -> None:
            self.credentials = credentials
            github = config.github
            if self.github is not None:
                if self.github.set_auth(credentials.auth):
                    log.info("reload: GitHub credentials replaced")
                self.github.set_limits(
                    timeout=github.request_timeout, max_concurrency=github.max_concurrency
                )
            if self.pools is not None:
                self.pools.set_provisioning_limit(config.scheduler.concurrency)
            for listener in self.listeners:
                listener.config_changed()  # labels, runner group: PATCH the scale set

        return apply


async def serve_until_signalled(daemon: Daemon) -> None:
    """Run the daemon; SIGHUP reloads, SIGTERM/SIGINT stop it cleanly."""
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading %s", daemon.live.current.path)
                    daemon.reload()
                    continue
                log.info(
                    "%s: stopping; runner containers keep running", signal.Signals(signum).name
                )
                daemon.notifier.stopping()
                await daemon.stop_taking_work()
                nursery.cancel_scope.cancel()
                break
