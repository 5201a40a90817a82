"""The configuration's shape: frozen dataclasses, one per TOML table, and when each key applies.

Every setting is declared with ``live(default)`` or ``restart(default)``: the reload column of
docs/configuration.md (a test holds the two together). *live* keys are read whenever a service
acts, so a reload applies them to the next decision; *restart* keys are read once at start.
``restart_required`` walks this metadata to name the restart keys a new file changes, dotted
as the loader names keys in its errors: ``server.listen``, ``pool "gpu".image``,
``priority[2].branch``.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

_T = TypeVar("_T")

DEFAULT_CONFIG_PATH = Path("/etc/gantryd/config.toml")
EX_CONFIG = 78  # sysexits.h: configuration error; the unit's RestartPreventExitStatus


class ConfigError(Exception):
    """A configuration problem, with the file and the key it concerns."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}" if key else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


class Reload(enum.StrEnum):
    """When a changed setting takes effect."""

    LIVE = "live"  # at once: the next decision reads it (running runners are not disturbed)
    RESTART = "restart"  # read once at start: a reload keeps the old value and says so


# Field metadata keys. _RELOAD is on every setting; _TABLE on the Config fields that hold a table
# (its name in the file, e.g. "pool"); _IN_FILE=False on Config fields the file does not set;
# _EFFECTIVE names a Config property to compare instead of the raw value (queue.path defaults
# to a file in state_dir: spelling that file out changes nothing).
_RELOAD = "reload"
_TABLE = "table"
_IN_FILE = "in_file"
_EFFECTIVE = "effective"


def live(default: _T) -> _T:
    """A setting a reload applies at once."""
    return field(default=default, metadata={_RELOAD: Reload.LIVE})


def restart(default: _T, *, effective: str = "") -> _T:
    """A setting read once at start; changing it needs ``systemctl restart gantryd``."""
    metadata: dict[str, object] = {_RELOAD: Reload.RESTART}
    if effective:
        metadata[_EFFECTIVE] = effective
    return field(default=default, metadata=metadata)


_LIVE: Mapping[str, object] = MappingProxyType({_RELOAD: Reload.LIVE})  # required or factory
_NOT_IN_FILE: Mapping[str, object] = MappingProxyType({_IN_FILE: False})


def _table(name: str) -> Any:
    return field(metadata={_TABLE: name})


class Scope(enum.StrEnum):
    REPOSITORY = "repository"  # runner registered on the job's repository (default, isolating)
    ORGANIZATION = "organization"  # runner registered on the org, in a runner group


class PoolSource(enum.StrEnum):
    """Where a pool learns of its jobs."""

    WEBHOOK = "webhook"  # workflow_job deliveries to the intake (needs a public endpoint)
    SCALE_SET = "scale-set"  # a listener long-polls GitHub's Actions service (outbound only)


class SecurityProfile(enum.StrEnum):
    STRICT = "strict"  # no capabilities, no-new-privileges: see agent/container/security.py
    SUDO = "sudo"  # as strict, but sudo works: setuid/setgid/audit_write, new privileges allowed
    COMPAT = "compat"  # Docker's default capabilities, the image's user; still unprivileged


class DockerMode(enum.StrEnum):
    """What Docker a pool's jobs get (docs/configuration.md "Docker inside jobs")."""

    NONE = "none"  # no Docker at all: `container:`, `services:` and Docker actions fail
    DIND = "dind"  # a Docker daemon of its own per runner, in a privileged sidecar


class PullPolicy(enum.StrEnum):
    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = restart("0.0.0.0:8080")  # webhook intake, "host:port"
    metrics_listen: str = restart("127.0.0.1:9464")
    webhook_path: str = live("/webhook")
    max_body: int = live(1024 * 1024)  # bytes; larger deliveries get 413
    response_deadline: float = live(5.0)  # seconds; intake answers 503 rather than later
    # Seconds for a request's headers, and for its body, to arrive; hypercorn takes it at start.
    read_timeout: float = restart(5.0)
    # Seconds an idle keep-alive connection is kept: longer than the idle timeout of whatever
    # sends to intake (a balancer's 60 s), so that side always closes first (docs/configuration.md).
    keep_alive_timeout: float = restart(75.0)
    # Intake connections open at once (hypercorn has no such cap); past it the oldest idle one
    # is cut, or accept waits (agent/orchestrator/admission.py). Capped below RLIMIT_NOFILE.
    max_connections: int = restart(512)
    state_dir: Path = restart(Path("/var/lib/gantryd"))
    runtime_dir: Path = restart(Path("/run/gantryd"))
    # Names this host in runner names and labels ("" = hostname); adoption finds runners by it.
    instance: str = restart("")
    log_level: str = live("info")  # debug | info | warning | error
    log_format: str = restart("text")  # text | json; the log handler is set up at start


@dataclass(frozen=True, kw_only=True)
class GitHubConfig:
    api_url: str = restart("https://api.github.com")  # GHES: "https://HOST/api/v3"
    # Credentials follow a reload: the client swaps its auth (agent/daemon.py, Daemon.reload).
    app_id: str = live("")  # GitHub App id or client id (JWT "iss"); "" with token_file
    private_key_file: Path | None = live(None)  # App private key (PEM), mode 0600
    token_file: Path | None = live(None)  # alternative to an App: a PAT, mode 0600
    webhook_secret_files: tuple[Path, ...] = live(())  # 1 or 2 (rotation); each mode 0600
    runner_prefix: str = live("gantryd")
    repositories: tuple[str, ...] = live(())  # "owner/name", swept by the reconciler
    organizations: tuple[str, ...] = live(())
    request_timeout: float = live(30.0)
    max_concurrency: int = live(8)
    reporting: str = live("all")  # all | failures | off: check runs (App) or commit statuses
    cancel_dead_jobs: bool = live(False)  # cancel the workflow run of a job gantryd gave up on


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    backend: str = restart("sqlite")  # sqlite | redis
    path: Path | None = restart(None, effective="queue_path")  # None = <state_dir>/queue.db
    synchronous: str = restart("full")  # full | normal (config.example.toml: the trade-off)
    redis_url: str = restart("redis://127.0.0.1:6379/0")
    redis_prefix: str = restart("gantryd")
    redis_password_file: Path | None = restart(None)  # AUTH password (first line), mode 0600
    # The Sentinels' own password (their requirepass), for redis+sentinel:// only.
    redis_sentinel_password_file: Path | None = restart(None)
    redis_ca_file: Path | None = restart(None)  # rediss://: CA bundle (PEM) for the server cert
    # The retry policy is handed to the backend when the queue is opened.
    retry_attempts: int = restart(3)
    retry_delay: float = restart(30.0)
    lease: float = live(120.0)  # seconds a claim lives without a heartbeat
    retention: float = live(7 * 86400.0)  # finished entries and delivery ids are kept this long


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_runners: int = live(10)  # all pools together
    concurrency: int = live(4)  # runners provisioned in parallel
    host_memory_share: float = live(0.8)  # sum of container memory limits <= this * host memory
    reconcile_interval: float = live(300.0)
    reconcile_rate_share: float = live(0.25)  # the reconciler leaves the rest of the rate limit
    gc_interval: float = live(300.0)


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    name: str = field(metadata=_LIVE)
    labels: tuple[str, ...] = field(metadata=_LIVE)  # a job matches if its labels are a subset
    image: str = live("ghcr.io/actions/actions-runner:latest")
    scope: Scope = live(Scope.REPOSITORY)
    runner_group: str = live("Default")  # organization scope only
    # The listener opens the scale set and its session once, at start.
    source: PoolSource = restart(PoolSource.WEBHOOK)
    scale_set_name: str = restart("")  # "" = the pool's name
    # Where the scale set registers: an organization login (scope = "organization") or
    # "owner/name" (scope = "repository"); "" = the one organization in github.organizations.
    scale_set_target: str = restart("")
    min_idle: int = live(0)
    # Where warm runners of a repository-scope pool register (spread evenly); an
    # organization-scope pool registers them in each of github.organizations.
    warm_repositories: tuple[str, ...] = live(())
    max_runners: int = live(4)
    max_concurrent: int = live(0)  # per repository; 0 = no per-repository cap
    priority: int = live(0)  # default priority of this pool's jobs; higher is served first
    memory: int = live(2 * 1024**3)  # bytes; swap is set equal (no swap)
    cpus: float = live(1.0)
    pids_limit: int = live(4096)
    nofile: int = live(65536)  # open files per process; dockerd's own hard limit must allow it
    tmp_size: int = live(1024**3)  # bytes of tmpfs at /tmp
    network: str = live("default")  # docker network: "default" (bridge) | "none" | "host" | name
    security: SecurityProfile = live(SecurityProfile.STRICT)
    # Read-only root; /home/runner then is a per-job volume (agent/container/security.py).
    read_only_rootfs: bool = live(False)
    # Bytes a job may write to disk (writable layer + /home/runner volume); 0 = no limit.
    disk_limit: int = live(0)
    # Docker inside jobs (agent/container/dind.py). A reload applies to new runners only: a
    # running one keeps the mode it started with.
    docker: DockerMode = live(DockerMode.NONE)
    # The pool's profile allows the privileged sidecar "dind" needs (the runner stays as
    # ``security`` says); docker = "dind" is refused without it.
    allow_privileged_sidecar: bool = live(False)
    docker_image: str = live("docker:dind")
    # true: Docker's --privileged; false: every capability but SYS_RESOURCE, no seccomp or
    # AppArmor confinement, writable cgroups, no host devices (engines that cannot grant
    # --privileged: agent/container/dind.py).
    docker_privileged: bool = live(True)
    docker_memory: int = live(2 * 1024**3)  # the sidecar's (inner daemon and its containers)
    docker_cpus: float = live(1.0)
    docker_pids_limit: int = live(4096)
    registry_mirror: str = live("")  # passed to the inner daemon as --registry-mirror
    pull_policy: PullPolicy = live(PullPolicy.IF_NOT_PRESENT)
    # if-not-present: how often a moving tag (:latest, no tag) is re-checked at the registry
    pull_interval: float = live(6 * 3600.0)
    bootstrap_timeout: float = live(300.0)
    # Below GitHub's idle expiry of JIT runners (~5 min, docs/github.md §3.2): a warm runner is
    # replaced before GitHub drops it.
    max_idle_age: float = live(240.0)
    job_timeout: float = live(6 * 3600.0)
    stop_grace: float = live(30.0)
    env: Mapping[str, str] = field(default_factory=dict, metadata=_LIVE)
    docker_labels: Mapping[str, str] = field(default_factory=dict, metadata=_LIVE)
    secrets: tuple[str, ...] = live(())

    @property
    def job_memory(self) -> int:
        """Memory limits one runner of this pool holds: its own, plus its sidecar's."""
        return self.memory + (self.docker_memory if self.docker is DockerMode.DIND else 0)


@dataclass(frozen=True, kw_only=True)
class PriorityRule:
    """First matching rule sets a job's priority. Unset fields match anything."""

    priority: int = field(metadata=_LIVE)
    repository: str | None = live(None)  # fnmatch glob on "owner/name"
    organization: str | None = live(None)
    workflow: str | None = live(None)  # glob on workflow name
    job: str | None = live(None)  # glob on job name
    branch: str | None = live(None)  # glob on head branch
    labels: tuple[str, ...] = live(())  # all must be among the job's labels (case-insensitive)


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path = field(metadata=_NOT_IN_FILE)
    server: ServerConfig = _table("server")
    github: GitHubConfig = _table("github")
    queue: QueueConfig = _table("queue")
    scheduler: SchedulerConfig = _table("scheduler")
    pools: tuple[PoolConfig, ...] = _table("pool")
    priorities: tuple[PriorityRule, ...] = field(default=(), metadata={_TABLE: "priority"})
    # Settings with no effect etc., found while loading.
    warnings: tuple[str, ...] = field(default=(), compare=False, metadata=_NOT_IN_FILE)

    @property
    def queue_path(self) -> Path:
        return self.queue.path or self.server.state_dir / "queue.db"

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)


# --- reload metadata ------------------------------------------------------------------------


def _setting_fields(cls: type[object]) -> Iterator[dataclasses.Field[Any]]:
    """The fields of a table's dataclass, each of which must say when it applies."""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not isinstance(f.metadata.get(_RELOAD), Reload):
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with live() or restart()")
        yield f


def _tables() -> Iterator[tuple[str, dataclasses.Field[Any], type[object]]]:
    """(name in the file, Config field, the table's dataclass) for each table of Config."""
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.metadata.get(_IN_FILE) is False:
            continue
        name = f.metadata.get(_TABLE)
        if not isinstance(name, str):
            raise TypeError(f"Config.{f.name}: mark it as a table or as not in the file")
        hint = hints[f.name]  # a table's class, or tuple[class, ...] for an array of tables
        yield name, f, typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint


def reload_schema() -> dict[str, Reload]:
    """Every key of the file as ``table.key`` (``server.listen``, ``pool.image``) and when a
    change to it takes effect."""
    return {
        f"{table}.{f.name}": f.metadata[_RELOAD]
        for table, _, cls in _tables()
        for f in _setting_fields(cls)
    }


def _restart_values(config: Config) -> dict[str, object]:
    """The value in force of each restart key of ``config``, by dotted name."""
    values: dict[str, object] = {}
    for table, config_field, cls in _tables():
        held = getattr(config, config_field.name)
        if isinstance(held, tuple):  # an array of tables: pools by name, rules by position
            items = [
                (f'{table} "{item.name}"' if hasattr(item, "name") else f"{table}[{index}]", item)
                for index, item in enumerate(held, 1)
            ]
        else:
            items = [(table, held)]
        for where, item in items:
            for f in _setting_fields(cls):
                if f.metadata[_RELOAD] is not Reload.RESTART:
                    continue
                effective = f.metadata.get(_EFFECTIVE)
                value = getattr(config if effective else item, effective or f.name)
                # In an array of tables a key left at its default is left out: a pool added,
                # removed or renamed with it (a webhook pool) is live.
                if isinstance(held, tuple) and value == f.default:
                    continue
                values[f"{where}.{f.name}"] = value
    return values


def restart_required(old: Config, new: Config) -> list[str]:
    """Dotted names of the restart keys whose value differs between ``old`` and ``new``, in
    the file's order (a key present in only one of them, in a pool added or removed, counts)."""
    before, after = _restart_values(old), _restart_values(new)
    missing = object()
    names = [*before, *(name for name in after if name not in before)]
    return [name for name in names if before.get(name, missing) != after.get(name, missing)]
