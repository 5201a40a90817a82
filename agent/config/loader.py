"""Loading the file: one validator per TOML table, then ``load_config`` over the whole file.

Relative paths are relative to the file's directory; ``${VAR}`` in a path comes from the
environment (systemd's ``$CREDENTIALS_DIRECTORY``). Each validator reads its table through
``Table``'s typed getters (agent/config/_table.py), then checks what concerns several keys;
the ``[[pool]]`` tables and their budget are ``agent.config.pools``'. The
first error found is raised; settings that have no effect are collected in
``Config.warnings``. The reference for users is docs/configuration.md, and
config.example.toml lists every key with its default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from agent.config._table import (
    Loader,
    Table,
    array_of_tables,
    get_table,
    is_integer,
)
from agent.config.pools import parse_pools
from agent.config.schema import (
    Config,
    ConfigError,
    GitHubConfig,
    PoolSource,
    PriorityRule,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
)
from agent.config.values import NAME, NAME_RULE, ORGANIZATION, REPOSITORY, parse_listen

_GITHUB_TIMEOUT = 10.0  # seconds GitHub waits for a webhook answer before failing the delivery


def _server(loader: Loader, document: Mapping[str, object]) -> ServerConfig:
    t = get_table(loader, document, "server")
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
        keep_alive_timeout=t.duration("keep_alive_timeout", d.keep_alive_timeout),
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        state_dir=t.path("state_dir", d.state_dir) or d.state_dir,
        runtime_dir=t.path("runtime_dir", d.runtime_dir) or d.runtime_dir,
        instance=t.string(
            "instance", d.instance, pattern=re.compile(f"(?:{NAME.pattern})?"), rule=NAME_RULE
        ),
        log_level=t.string("log_level", d.log_level, choices=("debug", "info", "warning", "error")),
        log_format=t.string("log_format", d.log_format, choices=("text", "json")),
    )


def _github(
    loader: Loader, document: Mapping[str, object], *, needs_webhooks: bool = True
) -> GitHubConfig:
    t = get_table(loader, document, "github")
    d = GitHubConfig()
    api_url = t.string("api_url", d.api_url)
    parts = urlsplit(api_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise t.error("api_url", f'"{api_url}" is not an http(s) URL, e.g. "{d.api_url}"')
    app_id = t.get("app_id", lambda v: isinstance(v, str) or is_integer(v), "a string or integer")
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
    if not secret_files and needs_webhooks:
        raise t.error(
            "webhook_secret_files",
            "missing; set webhook_secret_file to the file "
            "holding the webhook secret configured at GitHub (only pools with "
            'source = "scale-set" need none)',
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
        runner_prefix=t.string("runner_prefix", d.runner_prefix, pattern=NAME, rule=NAME_RULE),
        repositories=t.strings("repositories", pattern=REPOSITORY, rule='write "owner/name"'),
        organizations=t.strings(
            "organizations", pattern=ORGANIZATION, rule="an organization login"
        ),
        request_timeout=t.duration("request_timeout", d.request_timeout),
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, minimum=1),
        reporting=t.string("reporting", d.reporting, choices=("all", "failures", "off")),
        cancel_dead_jobs=t.boolean("cancel_dead_jobs", d.cancel_dead_jobs),
    )


def _queue(loader: Loader, document: Mapping[str, object]) -> QueueConfig:
    t = get_table(loader, document, "queue")
    d = QueueConfig()
    backend = t.string("backend", d.backend, choices=("sqlite", "redis"))
    unused = (
        (
            "redis_url",
            "redis_prefix",
            "redis_password_file",
            "redis_ca_file",
            "redis_sentinel_password_file",
        )
        if backend == "sqlite"
        else ("path", "synchronous")
    )
    for name in unused:
        if t.has(name):
            t.warn(name, f'has no effect with backend = "{backend}"')
    redis_url = t.string("redis_url", d.redis_url)
    scheme = urlsplit(redis_url).scheme
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel"):  # the URL may hold a password
        raise t.error(
            "redis_url", f'"{scheme}://…" is not redis://, rediss://, unix:// or redis+sentinel://'
        )
    if backend == "redis" and scheme != "redis+sentinel" and t.has("redis_sentinel_password_file"):
        t.warn(
            "redis_sentinel_password_file", "has no effect unless redis_url is redis+sentinel://"
        )
    return QueueConfig(
        backend=backend,
        path=t.path("path"),
        synchronous=t.string("synchronous", d.synchronous, choices=("full", "normal")),
        redis_url=redis_url,
        redis_prefix=t.string("redis_prefix", d.redis_prefix, pattern=NAME, rule=NAME_RULE),
        redis_password_file=t.path("redis_password_file"),
        redis_ca_file=t.path("redis_ca_file"),
        redis_sentinel_password_file=t.path("redis_sentinel_password_file"),
        retry_attempts=t.integer("retry_attempts", d.retry_attempts),
        retry_delay=t.duration("retry_delay", d.retry_delay, allow_zero=True),
        lease=t.duration("lease", d.lease),
        retention=t.duration("retention", d.retention),
    )


def _scheduler(loader: Loader, document: Mapping[str, object]) -> SchedulerConfig:
    t = get_table(loader, document, "scheduler")
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


def _priorities(loader: Loader, document: Mapping[str, object]) -> tuple[PriorityRule, ...]:
    rules: list[PriorityRule] = []
    tables = array_of_tables(loader, document, "priority")
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


_RUNTIME_DIR_LINE = re.compile(r'^\s*runtime_dir\s*=\s*"([^"\\]+)"', re.MULTILINE)


def runtime_dir_of(path: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    """Where the admin socket is, read from the file even when the file is invalid.

    ``gantryd status`` is most needed right after a reload failed on a broken file, so this
    uses only ``server.runtime_dir``: the whole file when it validates, else that one key of
    the TOML, else its ``runtime_dir = "..."`` line (a syntax error elsewhere), else the
    default. (runtime_dir applies only at restart, so the running daemon's is the file's
    unless that very line was edited since.)
    """
    try:
        return load_config(path, environ=environ).server.runtime_dir
    except ConfigError:
        pass
    loader = Loader(path, os.environ if environ is None else environ)
    value: object = None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ServerConfig().runtime_dir
    try:
        server = tomllib.loads(text).get("server")
        value = server.get("runtime_dir") if isinstance(server, Mapping) else None
    except tomllib.TOMLDecodeError:
        match = _RUNTIME_DIR_LINE.search(text)
        value = match.group(1) if match else None
    if not isinstance(value, str) or not value:
        return ServerConfig().runtime_dir
    try:
        return Table(loader, "server", {}).resolve("runtime_dir", value)
    except ConfigError:
        return ServerConfig().runtime_dir


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the whole file; raise ConfigError naming the first problem found.

    ``environ`` (default ``os.environ``) supplies ``${VAR}`` references in paths.
    """
    loader = Loader(path, os.environ if environ is None else environ)
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise loader.error("", f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise loader.error("", "invalid TOML: the file is not UTF-8") from None
    except OSError as exc:
        raise loader.error("", f"cannot read: {exc.strerror or exc}") from None
    Table(loader, "", document).check_keys("")
    server = _server(loader, document)
    pools = document.get("pool")
    only_scale_sets = isinstance(pools, list) and all(
        isinstance(p, dict) and p.get("source") == PoolSource.SCALE_SET.value for p in pools
    )
    github = _github(loader, document, needs_webhooks=not (pools and only_scale_sets))
    queue = _queue(loader, document)
    scheduler = _scheduler(loader, document)
    pools = parse_pools(loader, document, github, scheduler)
    priorities = _priorities(loader, document)
    for pool in pools:
        if pool.network == "host":
            loader.warn(f'pool "{pool.name}".network', _host_network_reach(server))
    return Config(
        path=path.absolute(),
        server=server,
        github=github,
        queue=queue,
        scheduler=scheduler,
        pools=pools,
        priorities=priorities,
        warnings=tuple(loader.warnings),
    )


def _host_network_reach(server: ServerConfig) -> str:
    """What a job on the host's network reaches (issue 13 §11: said nowhere before)."""
    return (
        '"host" shares the host\'s network with every job: it can reach webhook intake '
        f"({server.listen}; signed requests only, but floods and probes), /metrics "
        f"({server.metrics_listen}, unauthenticated) and anything listening on the host's "
        "loopback (databases, the Docker API if exposed over TCP, cloud metadata proxies); "
        "the admin socket is a unix socket in server.runtime_dir, out of its reach. Use "
        '"default" or a dedicated network unless jobs need the host\'s'
    )
