"""gantryd's configuration: TOML file -> frozen dataclasses, validated as a whole.

The config object is immutable and passed to the services that need it (never global). A SIGHUP
builds a new one from the file; ``restart_required`` names what a running process cannot apply.

Durations are strings such as ``"30s"``, ``"5m"``, ``"1h30m"``, ``"7d"`` (or a bare number of
seconds); sizes are strings such as ``"512MiB"``, ``"2GiB"``, ``"1GB"`` (or a bare number of
bytes); ``"GiB"`` is 1024-based and ``"GB"`` 1000-based. Parsed values are stored in seconds
(float) and bytes (int). Relative paths are relative to the file's directory; ``${VAR}`` in a
path comes from the environment (systemd's ``$CREDENTIALS_DIRECTORY``).

Layout: the dataclasses; value parsers (durations, sizes, addresses); ``_Table``, whose typed
getters raise ``ConfigError`` naming the dotted key; one validator per TOML table; then
``load_config``, ``restart_required`` and ``describe``. The first error found is raised; settings
that have no effect are collected in ``Config.warnings``. The reference for users is
docs/configuration.md, and config.example.toml lists every key with its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import urlsplit

_E = TypeVar("_E", bound=enum.Enum)

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


class Scope(enum.StrEnum):
    REPOSITORY = "repository"  # runner registered on the job's repository (default, isolating)
    ORGANIZATION = "organization"  # runner registered on the org, in a runner group


class SecurityProfile(enum.StrEnum):
    STRICT = "strict"  # no capabilities, no-new-privileges: see agent/container/security.py
    COMPAT = "compat"  # relaxed for images that need it; still unprivileged


class PullPolicy(enum.StrEnum):
    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = "0.0.0.0:8080"  # webhook intake, "host:port"
    metrics_listen: str = "127.0.0.1:9464"
    webhook_path: str = "/webhook"
    max_body: int = 1024 * 1024  # bytes; larger deliveries get 413
    response_deadline: float = 5.0  # seconds; intake answers 503 rather than later
    read_timeout: float = 5.0  # seconds for a request's headers, and for its body, to arrive
    state_dir: Path = Path("/var/lib/gantryd")
    runtime_dir: Path = Path("/run/gantryd")
    instance: str = ""  # names this host in runner names and labels; "" = hostname
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "text"  # text | json


@dataclass(frozen=True, kw_only=True)
class GitHubConfig:
    api_url: str = "https://api.github.com"  # GHES: "https://HOST/api/v3"
    app_id: str = ""  # GitHub App id or client id (JWT "iss"); "" with token_file
    private_key_file: Path | None = None  # App private key (PEM), mode 0600
    token_file: Path | None = None  # alternative to an App: a PAT, mode 0600
    webhook_secret_files: tuple[Path, ...] = ()  # 1 or 2 (rotation); each mode 0600
    runner_prefix: str = "gantryd"
    repositories: tuple[str, ...] = ()  # "owner/name", swept by the reconciler
    organizations: tuple[str, ...] = ()
    request_timeout: float = 30.0
    max_concurrency: int = 8
    reporting: str = "all"  # all | failures | off: check runs (App) or commit statuses (token)
    cancel_dead_jobs: bool = False  # cancel the workflow run of a job gantryd gave up on


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    backend: str = "sqlite"  # sqlite | redis
    path: Path | None = None  # sqlite file; None = <state_dir>/queue.db
    synchronous: str = "full"  # full | normal (see config.example.toml for the trade-off)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "gantryd"
    retry_attempts: int = 3
    retry_delay: float = 30.0
    lease: float = 120.0  # seconds a claim lives without a heartbeat
    retention: float = 7 * 86400.0  # finished entries and delivery ids are kept this long


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_runners: int = 10  # all pools together
    concurrency: int = 4  # runners provisioned in parallel
    host_memory_share: float = 0.8  # sum of container memory limits <= this * host memory
    reconcile_interval: float = 300.0
    reconcile_rate_share: float = 0.25  # the reconciler leaves the rest of GitHub's rate limit
    gc_interval: float = 300.0


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    name: str
    labels: tuple[str, ...]  # runner labels; a job matches if its labels are a subset
    image: str = "ghcr.io/actions/actions-runner:latest"
    scope: Scope = Scope.REPOSITORY
    runner_group: str = "Default"  # organization scope only
    min_idle: int = 0
    # Where warm runners of a repository-scope pool register (spread evenly); an
    # organization-scope pool registers them in each of github.organizations.
    warm_repositories: tuple[str, ...] = ()
    max_runners: int = 4
    max_concurrent: int = 0  # per repository; 0 = no per-repository cap
    priority: int = 0  # default priority of this pool's jobs; higher is served first
    memory: int = 2 * 1024**3  # bytes; swap is set equal (no swap)
    cpus: float = 1.0
    pids_limit: int = 4096
    nofile: int = 65536  # open files per process; dockerd's own hard limit must allow it
    tmp_size: int = 1024**3  # bytes of tmpfs at /tmp
    network: str = "default"  # docker network: "default" (bridge) | "none" | "host" | name
    security: SecurityProfile = SecurityProfile.STRICT
    # The official runner image writes its config into /home/runner, so read-only rootfs is
    # opt-in per pool.
    read_only_rootfs: bool = False
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    bootstrap_timeout: float = 300.0
    max_idle_age: float = 600.0
    job_timeout: float = 6 * 3600.0
    stop_grace: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)
    docker_labels: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PriorityRule:
    """First matching rule sets a job's priority. Unset fields match anything."""

    priority: int
    repository: str | None = None  # fnmatch glob on "owner/name"
    organization: str | None = None
    workflow: str | None = None  # glob on workflow name
    job: str | None = None  # glob on job name
    branch: str | None = None  # glob on head branch
    labels: tuple[str, ...] = ()  # all must be among the job's labels (case-insensitive)


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    server: ServerConfig
    github: GitHubConfig
    queue: QueueConfig
    scheduler: SchedulerConfig
    pools: tuple[PoolConfig, ...]
    priorities: tuple[PriorityRule, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)  # settings with no effect etc.

    @property
    def queue_path(self) -> Path:
        return self.queue.path or self.server.state_dir / "queue.db"

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)


# --- values: durations, sizes, listen addresses ---------------------------------------------

_DURATION_UNITS = {
    "d": Fraction(86400),
    "h": Fraction(3600),
    "m": Fraction(60),
    "s": Fraction(1),
    "ms": Fraction(1, 1000),
}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")  # "ms" before "m": alternation order
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_SIZE = re.compile(rf"({_NUMBER}) ?(?:([kmgt])(i?)b?|b)?", re.IGNORECASE)
_SIZE_PREFIXES = "kmgt"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_DURATION_FORMS = '"30s", "5m", "1h30m", "7d", "250ms" or a number of seconds'
_SIZE_FORMS = '"512MiB", "2GiB", "1GB", "100k" or a number of bytes'


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"1h30m"``, ``"250ms"``, ``"90"``; raises ValueError."""
    if re.fullmatch(_NUMBER, text):
        total = Fraction(text)
    elif _DURATION.fullmatch(text):
        parts = _DURATION_PART.findall(text)
        total = sum((Fraction(n) * _DURATION_UNITS[u] for n, u in parts), Fraction(0))
    else:
        raise ValueError(f'"{text}" is not a duration; write {_DURATION_FORMS}')
    try:
        return float(total)
    except OverflowError:
        raise ValueError(f'"{text}" is too long a duration') from None


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"1h30m"``, which ``parse_duration`` turns back into exactly ``seconds``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{seconds!r} is not a duration")
    millis = round(seconds * 1000)
    if float(Fraction(millis, 1000)) != seconds:
        # Not a whole number of milliseconds: plain decimal seconds, never "1e-05".
        return f"{Decimal(repr(seconds)):f}s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        per = int(_DURATION_UNITS[unit] * 1000)
        count, millis = divmod(millis, per)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``"2GiB"`` (binary, 1024-based), ``"1GB"`` or ``"100k"`` (decimal,
    1000-based), ``"512"`` (bytes). Letters are case-insensitive; raises ValueError."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f'"{text}" is not a size; write {_SIZE_FORMS}')
    number, prefix, binary = match.groups()
    power = _SIZE_PREFIXES.index(prefix.lower()) + 1 if prefix else 0
    total = Fraction(number) * (1024 if binary else 1000) ** power
    if total.denominator != 1:
        raise ValueError(f'"{text}" is not a whole number of bytes')
    return int(total)


def format_size(size: int) -> str:
    """``size`` bytes in the largest unit that divides it exactly (``parse_size`` reads it)."""
    if size == 0:
        return "0B"
    for power in range(len(_SIZE_PREFIXES), 0, -1):
        prefix = _SIZE_PREFIXES[power - 1].upper()
        if size % 1024**power == 0:
            return f"{size // 1024**power}{prefix}iB"
        if size % 1000**power == 0:
            return f"{size // 1000**power}{'k' if prefix == 'K' else prefix}B"
    return f"{size}B"


def _approx_size(size: int) -> str:
    """``size`` rounded for messages about measured amounts: "23.5GiB"."""
    power = min(max((size.bit_length() - 1) // 10, 0), len(_SIZE_PREFIXES))
    if power == 0:
        return f"{size}B"
    return f"{size / 1024**power:.1f}{_SIZE_PREFIXES[power - 1].upper()}iB"


def parse_listen(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``"host:port"`` / ``"[v6]:port"``; port 0 picks a free port (tests)."""
    bracketed = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})", text)
    match = bracketed or re.fullmatch(r"([^:\[\]]*):(\d{1,5})", text)
    if match is None:
        if text.count(":") > 1 and "[" not in text:
            raise ValueError(f'"{text}": put an IPv6 address in brackets, e.g. "[::1]:8080"')
        raise ValueError(f'"{text}" is not "host:port", e.g. "0.0.0.0:8080" or "[::]:8080"')
    host, port_text = match.groups()
    port = int(port_text)
    if port > 65535:
        raise ValueError(f'"{text}": port {port} is more than 65535')
    if bracketed is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{text}": "{host}" is not an IPv6 address') from None
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f'"{text}": "{host}" is not an IPv4 address') from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(
            f'"{text}": "{host}" is not a host name or address (use "0.0.0.0" for all)'
        )
    return host, port


# --- loading --------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_NAME_RULE = "use 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit"
_REPOSITORY = re.compile(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9_.-]{1,100}")
_ORGANIZATION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RESERVED_ENV_PREFIX = "ACTIONS_RUNNER_INPUT_"  # the JIT config travels this way, set by gantryd
_RESERVED_LABEL_PREFIX = "io.gantryd."
_DOCKER_MIN_MEMORY = 6 * 1024**2  # Docker refuses smaller memory limits
_GITHUB_TIMEOUT = 10.0  # seconds GitHub waits for a webhook answer before failing the delivery
_MAX_RUNNER_LABELS = 100  # generate-jitconfig accepts 1-100 labels

_TABLES: Mapping[str, str] = {  # top-level key -> how it is written
    "server": "[server]",
    "github": "[github]",
    "queue": "[queue]",
    "scheduler": "[scheduler]",
    "pool": "[[pool]]",
    "priority": "[[priority]]",
}
# The seed's JSON names (DESIGN §6). They are rejected with the key to use rather than accepted
# as aliases: one spelling per setting, and the seed's retryDelay was milliseconds where a bare
# number here is seconds, so an alias would silently mean something 1000 times longer.
_SEED_NAMES: Mapping[str, str] = {
    "containerPool": "its settings are keys of each [[pool]] (min_idle, max_runners)",
    "jobQueue": "its settings are in [queue] (retry_attempts, retry_delay) and [scheduler] "
    "(concurrency)",
    "container": "its settings are keys of each [[pool]] (image, memory, cpus)",
    "minContainers": "write min_idle (in [[pool]]: warm idle runners kept ready)",
    "maxContainers": "write max_runners (in [[pool]], or in [scheduler] for all pools together)",
    "scaleUpThreshold": "gantryd has no equivalent: it starts a runner for each queued job, "
    "up to max_runners",
    "scaleDownThreshold": "gantryd has no equivalent: runners are single-use and idle warm "
    "runners are recycled after max_idle_age",
    "retryAttempts": "write retry_attempts (in [queue])",
    "retryDelay": 'write retry_delay (in [queue]) as a duration such as "30s"; the seed\'s '
    "value was in milliseconds",
    "baseImage": "write image (in [[pool]])",
    "resourceLimits": "write memory and cpus (in [[pool]])",
}


def _field_names(cls: type[object]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


_TABLE_KEYS: Mapping[str, frozenset[str]] = {
    "server": _field_names(ServerConfig),
    "github": _field_names(GitHubConfig) | {"webhook_secret_file"},
    "queue": _field_names(QueueConfig),
    "scheduler": _field_names(SchedulerConfig),
    "pool": _field_names(PoolConfig),
    "priority": _field_names(PriorityRule),
}


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, with its article, for "got ..." messages."""
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return "a date/time"


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Loader:
    """What every table's validator shares: the file, the environment, collected warnings."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.base = path.absolute().parent
        self.environ = environ
        self.warnings: list[str] = []

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{key}: {problem}")


class _Table:
    """One TOML table under validation: typed getters whose errors name the dotted key.

    Each getter returns the default when the key is absent and raises ConfigError otherwise
    unless the value has the right type and range.
    """

    def __init__(self, loader: _Loader, where: str, raw: Mapping[str, object]) -> None:
        self.loader = loader
        self.where = where
        self.raw = raw

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, problem: str) -> ConfigError:
        return self.loader.error(self.key(name), problem)

    def warn(self, name: str, problem: str) -> None:
        self.loader.warn(self.key(name), problem)

    def has(self, name: str) -> bool:
        return name in self.raw

    def check_keys(self, kind: str) -> None:
        """Reject keys this kind of table does not have, naming the likely intended one."""
        known = _TABLE_KEYS[kind] if kind else frozenset(_TABLES)
        for name in self.raw:
            if name not in known:
                raise self.error(name, "unknown key; " + _unknown_key_hint(name, kind, known))

    def get(self, name: str, ok: Callable[[object], bool], expected: str) -> object:
        value = self.raw.get(name)
        if value is not None and not ok(value):
            raise self.error(
                name, f"expected {expected}, got {_toml_type(value)} ({_shown(value)})"
            )
        return value

    def required(self, name: str, what: str) -> None:
        if name not in self.raw:
            raise self.error(name, f"missing; {what}")

    def string(
        self,
        name: str,
        default: str,
        *,
        choices: tuple[str, ...] = (),
        pattern: re.Pattern[str] | None = None,
        rule: str = "",
    ) -> str:
        value = self.get(name, lambda v: isinstance(v, str), "a string")
        if not isinstance(value, str):
            return default
        if choices and value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            raise self.error(name, f'"{value}" is not one of {allowed}')
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(name, f'"{value}" is not valid: {rule}')
        return value

    def choice(self, name: str, default: _E) -> _E:
        values = tuple(str(member.value) for member in type(default))
        return type(default)(self.string(name, str(default.value), choices=values))

    def integer(self, name: str, default: int, *, minimum: int | None = 0) -> int:
        value = self.get(name, _is_integer, "an integer")
        if not isinstance(value, int):
            return default
        if minimum is not None and value < minimum:
            raise self.error(name, _too_small(value, minimum))
        return value

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float, why: str = ""
    ) -> float:
        value = self.get(name, _is_number, "a number")
        if not isinstance(value, int | float):
            return default
        if not minimum <= value <= maximum:
            limits = f"must be between {minimum:g} and {maximum:g}{why}"
            raise self.error(name, f"{limits}, got {value:g}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, lambda v: isinstance(v, bool), "a boolean (true or false)")
        return value if isinstance(value, bool) else default

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.get(
            name, lambda v: isinstance(v, str) or _is_number(v), f"a duration ({_DURATION_FORMS})"
        )
        if isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise self.error(name, str(exc)) from None
        elif not isinstance(value, int | float):
            return default
        else:
            seconds = float(value)
            if not math.isfinite(seconds) or seconds < 0:
                raise self.error(
                    name, f"{_shown(value)} is not a duration; write {_DURATION_FORMS}"
                )
        if seconds == 0 and not allow_zero:
            raise self.error(name, "must be longer than 0")
        return seconds

    def size(self, name: str, default: int, *, minimum: int = 1) -> int:
        value = self.get(name, lambda v: isinstance(v, str) or _is_integer(v), "a size")
        if isinstance(value, str):
            try:
                size = parse_size(value)
            except ValueError as exc:
                raise self.error(name, str(exc)) from None
        elif isinstance(value, int):
            size = value
        else:
            return default
        if size < minimum:
            shown = _shown(value)
            raise self.error(name, f"{shown} is less than the minimum, {format_size(minimum)}")
        return size

    def listen(self, name: str, default: str) -> str:
        value = self.string(name, default)
        try:
            parse_listen(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
        return value

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.string(name, "")
        if name not in self.raw:
            return default
        if not value:
            raise self.error(name, "must not be empty")
        return self.resolve(name, value)

    def resolve(self, key: str, value: str) -> Path:
        """``${VAR}`` expanded from the environment, then relative to the config file's dir."""

        def expand(match: re.Match[str]) -> str:
            variable = match.group(1)
            if variable not in self.loader.environ:
                hint = " (systemd sets it for LoadCredential=)" if "CREDENTIALS" in variable else ""
                raise self.error(key, f"environment variable {variable} is not set{hint}")
            return self.loader.environ[variable]

        return self.loader.base / _ENV_REFERENCE.sub(expand, value)

    def strings(
        self, name: str, *, pattern: re.Pattern[str] | None = None, rule: str = ""
    ) -> tuple[str, ...]:
        """An array of non-empty strings without duplicates (case-insensitive)."""
        value = self.get(name, lambda v: isinstance(v, list), "an array of strings")
        if not isinstance(value, list):
            return ()
        seen: dict[str, int] = {}
        for index, item in enumerate(value, 1):
            item_key = f"{name}[{index}]"
            if not isinstance(item, str):
                raise self.error(item_key, f"expected a string, got {_toml_type(item)}")
            if not item.strip():
                raise self.error(item_key, "must not be empty")
            if item.lower() in seen:
                raise self.error(item_key, f'"{item}" is listed twice')
            if pattern is not None and not pattern.fullmatch(item):
                raise self.error(item_key, f'"{item}" is not valid: {rule}')
            seen[item.lower()] = index
        return tuple(value)

    def mapping(self, name: str) -> Mapping[str, str]:
        value = self.get(name, lambda v: isinstance(v, dict), "a table of strings")
        if not isinstance(value, dict):
            return MappingProxyType({})
        for item_name, item in value.items():
            if not isinstance(item, str):
                raise self.error(
                    f"{name}.{item_name}",
                    f"expected a string, got {_toml_type(item)} ({_shown(item)})",
                )
        return MappingProxyType(dict(value))

    def credential(self, name: str, path: Path, *, pem: bool = False) -> None:
        """A secret file must exist, be readable and non-empty; warn if others can read it."""
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise self.error(name, f"{path} is not a regular file")
            data = path.read_bytes()
        except FileNotFoundError:
            raise self.error(name, f"{path} does not exist") from None
        except OSError as exc:
            raise self.error(name, f"cannot read {path}: {exc.strerror}") from None
        if not data.strip():
            raise self.error(name, f"{path} is empty")
        if pem and b"PRIVATE KEY-----" not in data:
            raise self.error(
                name,
                f"{path} is not a PEM private key (GitHub App settings: Generate a private key)",
            )
        if mode & 0o077:
            self.warn(
                name,
                f"{path} has mode {stat.S_IMODE(mode):04o}: group or others can use it; "
                f"chmod 600 {path}",
            )


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _too_small(value: int, minimum: int) -> str:
    if minimum == 0:
        return f"must not be negative, got {value}"
    return f"must be at least {minimum}, got {value}"


def _unknown_key_hint(name: str, kind: str, known: frozenset[str]) -> str:
    """The seed's name, a key of another table, or the closest spelling of a known key."""
    if name in _SEED_NAMES:
        return f"this is the seed's name: {_SEED_NAMES[name]}"
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    if snake != name and snake in known:
        return f"gantryd keys are snake_case: write {snake}"
    homes = [
        _TABLES[other] for other, keys in _TABLE_KEYS.items() if name in keys and other != kind
    ]
    if homes:
        return f"{name} belongs in {' or '.join(homes)}"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if not close and len(name) >= 3:
        close = sorted(k for k in known if k.startswith(name) or name.startswith(k))
    if close:
        return f"did you mean {close[0]}?"
    return "known keys: " + ", ".join(sorted(known))


def _table(loader: _Loader, document: Mapping[str, object], name: str) -> _Table:
    raw = document.get(name, {})
    if not isinstance(raw, dict):
        raise loader.error(name, f"expected a table ({_TABLES[name]}), got {_toml_type(raw)}")
    table = _Table(loader, name, raw)
    table.check_keys(name)
    return table


def _array_of_tables(loader: _Loader, document: Mapping[str, object], name: str) -> list[_Table]:
    raw = document.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        spelled = "a table" if isinstance(raw, dict) else _toml_type(raw)
        raise loader.error(name, f"expected an array of tables ({_TABLES[name]}), got {spelled}")
    return [_Table(loader, f"{name}[{index}]", item) for index, item in enumerate(raw, 1)]


def _server(loader: _Loader, document: Mapping[str, object]) -> ServerConfig:
    t = _table(loader, document, "server")
    d = ServerConfig()
    listen = t.listen("listen", d.listen)
    metrics_listen = t.listen("metrics_listen", d.metrics_listen)
    (host, port), (metrics_host, metrics_port) = parse_listen(listen), parse_listen(metrics_listen)
    wildcard = {"0.0.0.0", "::"}
    if port == metrics_port != 0 and (host == metrics_host or {host, metrics_host} & wildcard):
        raise t.error("metrics_listen", f'"{metrics_listen}" collides with listen "{listen}"')
    response_deadline = t.duration("response_deadline", d.response_deadline)
    if response_deadline >= _GITHUB_TIMEOUT:
        raise t.error(
            "response_deadline",
            f"must be shorter than {_GITHUB_TIMEOUT:g}s: GitHub fails deliveries not answered "
            "by then and never retries them",
        )
    return ServerConfig(
        listen=listen,
        metrics_listen=metrics_listen,
        webhook_path=t.string(
            "webhook_path", d.webhook_path, pattern=re.compile(r"/[^\s?#]*"), rule="start with /"
        ),
        max_body=t.size("max_body", d.max_body, minimum=1024),
        response_deadline=response_deadline,
        read_timeout=t.duration("read_timeout", d.read_timeout),
        state_dir=t.path("state_dir", d.state_dir) or d.state_dir,
        runtime_dir=t.path("runtime_dir", d.runtime_dir) or d.runtime_dir,
        instance=t.string(
            "instance", d.instance, pattern=re.compile(f"(?:{_NAME.pattern})?"), rule=_NAME_RULE
        ),
        log_level=t.string("log_level", d.log_level, choices=("debug", "info", "warning", "error")),
        log_format=t.string("log_format", d.log_format, choices=("text", "json")),
    )


def _github(loader: _Loader, document: Mapping[str, object]) -> GitHubConfig:
    t = _table(loader, document, "github")
    d = GitHubConfig()
    api_url = t.string("api_url", d.api_url)
    parts = urlsplit(api_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise t.error("api_url", f'"{api_url}" is not an http(s) URL, e.g. "{d.api_url}"')
    app_id = t.get("app_id", lambda v: isinstance(v, str) or _is_integer(v), "a string or integer")
    private_key_file = t.path("private_key_file")
    token_file = t.path("token_file")
    if t.has("webhook_secret_file") and t.has("webhook_secret_files"):
        raise t.error(
            "webhook_secret_file", "give webhook_secret_file or webhook_secret_files, not both"
        )
    single = t.path("webhook_secret_file")
    secret_files: tuple[Path, ...]
    if single is not None:
        secret_files, secret_keys = (single,), ["webhook_secret_file"]
    else:
        names = t.strings("webhook_secret_files")
        secret_files = tuple(t.resolve("webhook_secret_files", n) for n in names)
        secret_keys = [f"webhook_secret_files[{i}]" for i in range(1, len(names) + 1)]
    app = "app_id and private_key_file (a GitHub App)"
    if app_id not in (None, "") and private_key_file is None:
        raise t.error(
            "private_key_file", "missing; a GitHub App needs both app_id and private_key_file"
        )
    if private_key_file is not None and app_id in (None, ""):
        raise t.error("app_id", "missing; a GitHub App needs both app_id and private_key_file")
    if private_key_file is not None and token_file is not None:
        raise t.error("token_file", f"give either {app} or token_file, not both")
    if private_key_file is None and token_file is None:
        raise loader.error("github", f"no GitHub credentials: set {app}, or token_file")
    if not secret_files:
        raise t.error(
            "webhook_secret_files",
            "missing; set webhook_secret_file to the file "
            "holding the webhook secret configured at GitHub",
        )
    if len(secret_files) > 2:
        raise t.error("webhook_secret_files", "at most 2 files (the current and the next secret)")
    if private_key_file is not None:
        t.credential("private_key_file", private_key_file, pem=True)
    if token_file is not None:
        t.credential("token_file", token_file)
    for key, secret_file in zip(secret_keys, secret_files, strict=True):
        t.credential(key, secret_file)
    return GitHubConfig(
        api_url=api_url.rstrip("/"),
        app_id=str(app_id or ""),
        private_key_file=private_key_file,
        token_file=token_file,
        webhook_secret_files=secret_files,
        runner_prefix=t.string("runner_prefix", d.runner_prefix, pattern=_NAME, rule=_NAME_RULE),
        repositories=t.strings("repositories", pattern=_REPOSITORY, rule='write "owner/name"'),
        organizations=t.strings(
            "organizations", pattern=_ORGANIZATION, rule="an organization login"
        ),
        request_timeout=t.duration("request_timeout", d.request_timeout),
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, minimum=1),
        reporting=t.string("reporting", d.reporting, choices=("all", "failures", "off")),
        cancel_dead_jobs=t.boolean("cancel_dead_jobs", d.cancel_dead_jobs),
    )


def _queue(loader: _Loader, document: Mapping[str, object]) -> QueueConfig:
    t = _table(loader, document, "queue")
    d = QueueConfig()
    backend = t.string("backend", d.backend, choices=("sqlite", "redis"))
    unused = ("redis_url", "redis_prefix") if backend == "sqlite" else ("path", "synchronous")
    for name in unused:
        if t.has(name):
            t.warn(name, f'has no effect with backend = "{backend}"')
    redis_url = t.string("redis_url", d.redis_url)
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise t.error("redis_url", f'"{redis_url}" is not a redis://, rediss:// or unix:// URL')
    return QueueConfig(
        backend=backend,
        path=t.path("path"),
        synchronous=t.string("synchronous", d.synchronous, choices=("full", "normal")),
        redis_url=redis_url,
        redis_prefix=t.string("redis_prefix", d.redis_prefix, pattern=_NAME, rule=_NAME_RULE),
        retry_attempts=t.integer("retry_attempts", d.retry_attempts),
        retry_delay=t.duration("retry_delay", d.retry_delay, allow_zero=True),
        lease=t.duration("lease", d.lease),
        retention=t.duration("retention", d.retention),
    )


def _scheduler(loader: _Loader, document: Mapping[str, object]) -> SchedulerConfig:
    t = _table(loader, document, "scheduler")
    d = SchedulerConfig()
    return SchedulerConfig(
        max_runners=t.integer("max_runners", d.max_runners, minimum=1),
        concurrency=t.integer("concurrency", d.concurrency, minimum=1),
        host_memory_share=t.number(
            "host_memory_share", d.host_memory_share, minimum=0.01, maximum=1
        ),
        reconcile_interval=t.duration("reconcile_interval", d.reconcile_interval),
        reconcile_rate_share=t.number(
            "reconcile_rate_share", d.reconcile_rate_share, minimum=0.01, maximum=1
        ),
        gc_interval=t.duration("gc_interval", d.gc_interval),
    )


def _pool(t: _Table, github: GitHubConfig) -> PoolConfig:
    name = t.raw.get("name")
    if isinstance(name, str) and _NAME.fullmatch(name):
        t.where = f'pool "{name}"'
    t.check_keys("pool")
    t.required("name", 'every [[pool]] needs a name, e.g. name = "default"')
    name = t.string("name", "", pattern=_NAME, rule=_NAME_RULE)
    t.required(
        "labels", 'a pool serves jobs whose runs-on labels it has, e.g. ["self-hosted", "linux"]'
    )
    labels = t.strings("labels")
    if not labels:
        raise t.error(
            "labels",
            "must list at least one label; a job runs here if all of its "
            "runs-on labels are among them",
        )
    if len(labels) > _MAX_RUNNER_LABELS:
        raise t.error("labels", f"GitHub accepts at most {_MAX_RUNNER_LABELS} runner labels")
    if bad := next((label for label in labels if "," in label), None):
        raise t.error("labels", f'"{bad}": a label cannot contain ","')
    d = PoolConfig(name=name, labels=labels)
    scope = t.choice("scope", d.scope)
    if scope is Scope.ORGANIZATION and not github.organizations:
        raise t.error(
            "scope",
            'scope = "organization" registers runners in an organization: '
            "list it in github.organizations",
        )
    if scope is Scope.REPOSITORY and t.has("runner_group"):
        t.warn(
            "runner_group",
            'has no effect with scope = "repository" (repository runners '
            "always join the Default group)",
        )
    min_idle = t.integer("min_idle", d.min_idle)
    warm_repositories = t.strings(
        "warm_repositories", pattern=_REPOSITORY, rule='write "owner/name"'
    )
    if warm_repositories and scope is Scope.ORGANIZATION:
        t.warn("warm_repositories", 'has no effect with scope = "organization"')
    max_runners = t.integer("max_runners", d.max_runners, minimum=1)
    if min_idle > max_runners:
        raise t.error("min_idle", f"{min_idle} is more than max_runners ({max_runners})")
    if min_idle and scope is Scope.REPOSITORY and not warm_repositories:
        t.warn(
            "min_idle",
            "has no effect: warm runners need a place to register; list repositories in "
            'warm_repositories, or use scope = "organization"',
        )
    max_concurrent = t.integer("max_concurrent", d.max_concurrent)
    if max_concurrent >= max_runners:
        t.warn("max_concurrent", f"has no effect: not less than max_runners ({max_runners})")
    host_cpus = os.cpu_count() or 1
    cpus = t.number(
        "cpus", d.cpus, minimum=0.01, maximum=host_cpus, why=f" (this host has {host_cpus} CPUs)"
    )
    env = t.mapping("env")
    for variable in env:
        if not _ENV_NAME.fullmatch(variable):
            raise t.error(f"env.{variable}", "is not an environment variable name")
        if variable.startswith(_RESERVED_ENV_PREFIX):
            raise t.error(f"env.{variable}", f"{_RESERVED_ENV_PREFIX}* is set by gantryd")
    docker_labels = t.mapping("docker_labels")
    for label in docker_labels:
        if label.startswith(_RESERVED_LABEL_PREFIX):
            raise t.error(f"docker_labels.{label}", f"{_RESERVED_LABEL_PREFIX}* is gantryd's own")
    return PoolConfig(
        name=name,
        labels=labels,
        image=t.string("image", d.image, pattern=re.compile(r"\S+"), rule="an image reference"),
        scope=scope,
        runner_group=t.string(
            "runner_group",
            d.runner_group,
            pattern=re.compile(r".*\S.*"),
            rule="name a runner group",
        ),
        min_idle=min_idle,
        warm_repositories=warm_repositories,
        max_runners=max_runners,
        max_concurrent=max_concurrent,
        priority=t.integer("priority", d.priority, minimum=None),
        memory=t.size("memory", d.memory, minimum=_DOCKER_MIN_MEMORY),
        cpus=cpus,
        pids_limit=t.integer("pids_limit", d.pids_limit, minimum=1),
        nofile=t.integer("nofile", d.nofile, minimum=64),
        tmp_size=t.size("tmp_size", d.tmp_size),
        network=t.string("network", d.network, pattern=re.compile(r"\S+"), rule="a network name"),
        security=t.choice("security", d.security),
        read_only_rootfs=t.boolean("read_only_rootfs", d.read_only_rootfs),
        pull_policy=t.choice("pull_policy", d.pull_policy),
        bootstrap_timeout=t.duration("bootstrap_timeout", d.bootstrap_timeout),
        max_idle_age=t.duration("max_idle_age", d.max_idle_age),
        job_timeout=t.duration("job_timeout", d.job_timeout),
        stop_grace=t.duration("stop_grace", d.stop_grace, allow_zero=True),
        env=env,
        docker_labels=docker_labels,
        secrets=t.strings(
            "secrets", pattern=_ENV_NAME, rule="a secret name (letters, digits, '_')"
        ),
    )


def _pools(
    loader: _Loader,
    document: Mapping[str, object],
    github: GitHubConfig,
    scheduler: SchedulerConfig,
) -> tuple[PoolConfig, ...]:
    tables = _array_of_tables(loader, document, "pool")
    if not tables:
        raise loader.error("pool", "no [[pool]] table: gantryd needs at least one pool to run jobs")
    pools: list[PoolConfig] = []
    for table in tables:
        pool = _pool(table, github)
        if any(other.name == pool.name for other in pools):
            raise table.error("name", f'another [[pool]] is already named "{pool.name}"')
        pools.append(pool)
    _check_budget(loader, pools, scheduler)
    return tuple(pools)


def _check_budget(loader: _Loader, pools: list[PoolConfig], scheduler: SchedulerConfig) -> None:
    """Pools must fit the global runner cap and the host memory budget."""
    warm = sum(pool.min_idle for pool in pools)
    if warm > scheduler.max_runners:
        raise loader.error(
            "scheduler.max_runners",
            f"{scheduler.max_runners} is less than the pools' min_idle together ({warm})",
        )
    try:
        host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        host_memory = 0  # unknown: nothing to check against
    budget = int(host_memory * scheduler.host_memory_share)
    for pool in pools:
        where = f'pool "{pool.name}"'
        if pool.max_runners > scheduler.max_runners:
            loader.warn(
                f"{where}.max_runners",
                f"{pool.max_runners} is more than "
                f"scheduler.max_runners ({scheduler.max_runners}), which caps it",
            )
        if not host_memory:
            continue
        share = (
            f"scheduler.host_memory_share {scheduler.host_memory_share:g} of "
            f"{_approx_size(host_memory)} host memory = {_approx_size(budget)}"
        )
        if pool.memory > budget:
            raise loader.error(
                f"{where}.memory",
                f"{format_size(pool.memory)} is more than the "
                f"memory budget ({share}): no runner would ever start",
            )
        if pool.memory * pool.max_runners > budget:
            loader.warn(
                f"{where}.max_runners",
                f"only {budget // pool.memory} runners of "
                f"{format_size(pool.memory)} fit the memory budget ({share})",
            )


def _priorities(loader: _Loader, document: Mapping[str, object]) -> tuple[PriorityRule, ...]:
    rules: list[PriorityRule] = []
    tables = _array_of_tables(loader, document, "priority")
    for table in tables:
        table.check_keys("priority")
        table.required("priority", "the priority this rule gives (higher is served first)")
        globs = {
            name: table.string(name, "") or None
            for name in ("repository", "organization", "workflow", "job", "branch")
        }
        rule = PriorityRule(
            priority=table.integer("priority", 0, minimum=None),
            labels=table.strings("labels"),
            **globs,
        )
        if any(earlier == PriorityRule(priority=earlier.priority) for earlier in rules):
            loader.warn(table.where, "has no effect: an earlier rule matches every job")
        rules.append(rule)
    return tuple(rules)


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the whole file; raise ConfigError naming the first problem found.

    ``environ`` (default ``os.environ``) supplies ``${VAR}`` references in paths.
    """
    loader = _Loader(path, os.environ if environ is None else environ)
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise loader.error("", f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise loader.error("", "invalid TOML: the file is not UTF-8") from None
    except OSError as exc:
        raise loader.error("", f"cannot read: {exc.strerror or exc}") from None
    _Table(loader, "", document).check_keys("")
    server = _server(loader, document)
    github = _github(loader, document)
    queue = _queue(loader, document)
    scheduler = _scheduler(loader, document)
    return Config(
        path=path.absolute(),
        server=server,
        github=github,
        queue=queue,
        scheduler=scheduler,
        pools=_pools(loader, document, github, scheduler),
        priorities=_priorities(loader, document),
        warnings=tuple(loader.warnings),
    )


# --- reload and summary ---------------------------------------------------------------------

_RESTART_KEYS: Mapping[str, Callable[[Config], object]] = {
    "server.listen": lambda c: c.server.listen,
    "server.metrics_listen": lambda c: c.server.metrics_listen,
    "server.state_dir": lambda c: c.server.state_dir,
    "server.runtime_dir": lambda c: c.server.runtime_dir,
    "server.read_timeout": lambda c: c.server.read_timeout,  # hypercorn's, set at start
    "queue.backend": lambda c: c.queue.backend,
    "queue.path": lambda c: c.queue_path,  # the file actually opened
    "queue.redis_url": lambda c: c.queue.redis_url,
    "queue.redis_prefix": lambda c: c.queue.redis_prefix,
}


def restart_required(old: Config, new: Config) -> list[str]:
    """Dotted names of changed keys that a running process cannot apply (SIGHUP keeps the
    old value for these and reports them; everything else applies live)."""
    return [name for name, value in _RESTART_KEYS.items() if value(old) != value(new)]


def describe(config: Config) -> str:
    """A short summary of what the daemon would do, for ``gantryd check-config``."""
    server, github, queue = config.server, config.github, config.queue
    if github.private_key_file is not None:
        auth = f"GitHub App {github.app_id} (key {github.private_key_file})"
    else:
        auth = f"token from {github.token_file}"
    secrets = len(github.webhook_secret_files)
    if queue.backend == "sqlite":
        backend = f"sqlite {config.queue_path} (synchronous={queue.synchronous})"
    else:
        backend = f"redis {_without_password(queue.redis_url)} (prefix {queue.redis_prefix})"
    lines = [
        f"config     {config.path}",
        f"intake     http://{server.listen}{server.webhook_path}, "
        f"metrics http://{server.metrics_listen}/metrics",
        f"github     {github.api_url}, {auth}, {secrets} webhook secret{'s' * (secrets > 1)}",
        f"queue      {backend}, {queue.retry_attempts} retries, the first after "
        f"{format_duration(queue.retry_delay)}",
        f"scheduler  at most {config.scheduler.max_runners} runners, "
        f"{config.scheduler.concurrency} started at once",
    ]
    for pool in config.pools:
        scope = pool.scope.value
        if pool.scope is Scope.ORGANIZATION:
            scope += f" (group {pool.runner_group})"
        lines += [
            f'pool "{pool.name}"  labels {", ".join(pool.labels)}',
            f"    image {pool.image} ({pool.pull_policy.value}), {scope} scope",
            f"    runners {pool.min_idle} idle .. {pool.max_runners}, "
            f"{format_size(pool.memory)} memory, {pool.cpus:g} CPU each, "
            f"{pool.security.value} profile, job timeout {format_duration(pool.job_timeout)}",
        ]
    if config.priorities:
        lines.append(f"priorities {len(config.priorities)} rules")
    return "\n".join(lines)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
