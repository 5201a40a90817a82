"""Loading the file: one validator per TOML table, then ``load_config`` over the whole file.

Relative paths are relative to the file's directory; ``${VAR}`` in a path comes from the
environment (systemd's ``$CREDENTIALS_DIRECTORY``). Each validator reads its table through
``Table``'s typed getters (agent/config/_table.py), then checks what concerns several keys;
``_check_budget`` checks the pools against the scheduler's caps and the host's memory. The
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
from agent.config.schema import (
    Config,
    ConfigError,
    GitHubConfig,
    PoolConfig,
    PoolSource,
    PriorityRule,
    QueueConfig,
    SchedulerConfig,
    Scope,
    ServerConfig,
)
from agent.config.values import approx_size, format_size, parse_listen

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_NAME_RULE = "use 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit"
_REPOSITORY = re.compile(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9_.-]{1,100}")
_ORGANIZATION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_ENV_PREFIX = "ACTIONS_RUNNER_INPUT_"  # the JIT config travels this way, set by gantryd
_RESERVED_LABEL_PREFIX = "io.gantryd."
_DOCKER_MIN_MEMORY = 6 * 1024**2  # Docker refuses smaller memory limits
_MIN_DISK_LIMIT = 1024**2  # below this not even the runner's own files fit
_GITHUB_TIMEOUT = 10.0  # seconds GitHub waits for a webhook answer before failing the delivery
_MAX_RUNNER_LABELS = 100  # generate-jitconfig accepts 1-100 labels


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
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        state_dir=t.path("state_dir", d.state_dir) or d.state_dir,
        runtime_dir=t.path("runtime_dir", d.runtime_dir) or d.runtime_dir,
        instance=t.string(
            "instance", d.instance, pattern=re.compile(f"(?:{_NAME.pattern})?"), rule=_NAME_RULE
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


def _queue(loader: Loader, document: Mapping[str, object]) -> QueueConfig:
    t = get_table(loader, document, "queue")
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


def _pool(t: Table, github: GitHubConfig) -> PoolConfig:
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
    source = t.choice("source", d.source)
    scale_set_name, scale_set_target = _scale_set(t, name, scope, source, github)
    min_idle = t.integer("min_idle", d.min_idle)
    warm_repositories = t.strings(
        "warm_repositories", pattern=_REPOSITORY, rule='write "owner/name"'
    )
    if warm_repositories and scope is Scope.ORGANIZATION:
        t.warn("warm_repositories", 'has no effect with scope = "organization"')
    max_runners = t.integer("max_runners", d.max_runners, minimum=1)
    if min_idle > max_runners:
        raise t.error("min_idle", f"{min_idle} is more than max_runners ({max_runners})")
    if min_idle and scope is Scope.REPOSITORY and not warm_repositories and source is d.source:
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
        source=source,
        scale_set_name=scale_set_name,
        scale_set_target=scale_set_target,
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
        disk_limit=t.size("disk_limit", d.disk_limit, minimum=_MIN_DISK_LIMIT),
        pull_policy=t.choice("pull_policy", d.pull_policy),
        pull_interval=t.duration("pull_interval", d.pull_interval),
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


def _scale_set(
    t: Table, name: str, scope: Scope, source: PoolSource, github: GitHubConfig
) -> tuple[str, str]:
    """A scale-set pool's scale set name and where it registers (an organization login or
    "owner/name", per ``scope``); both "" for a webhook pool."""
    keys = ("scale_set_name", "scale_set_target")
    if source is PoolSource.WEBHOOK:
        for key in keys:
            if t.has(key):
                t.warn(key, 'has no effect with source = "webhook"')
        return "", ""
    scale_set_name = t.string(
        "scale_set_name", name, pattern=re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,44}"),
        rule="use 1-45 letters, digits, '_', '.' or '-', starting with a letter or digit",
    )  # fmt: skip
    target = t.string("scale_set_target", "")
    if scope is Scope.ORGANIZATION:
        if not target:
            if len(github.organizations) != 1:
                raise t.error(
                    "scale_set_target",
                    "missing; name the organization the scale set registers in "
                    f"(github.organizations lists {len(github.organizations)})",
                )
            target = github.organizations[0]
        if not _ORGANIZATION.fullmatch(target):
            raise t.error(
                "scale_set_target",
                f'"{target}" is not an organization login (scope = "organization")',
            )
    elif not _REPOSITORY.fullmatch(target):
        raise t.error(
            "scale_set_target",
            ("missing; " if not target else f'"{target}" is not valid: ')
            + 'a scope = "repository" scale set registers in one repository: write "owner/name"',
        )
    return scale_set_name, target


def _pools(
    loader: Loader,
    document: Mapping[str, object],
    github: GitHubConfig,
    scheduler: SchedulerConfig,
) -> tuple[PoolConfig, ...]:
    tables = array_of_tables(loader, document, "pool")
    if not tables:
        raise loader.error("pool", "no [[pool]] table: gantryd needs at least one pool to run jobs")
    pools: list[PoolConfig] = []
    for table in tables:
        pool = _pool(table, github)
        if any(other.name == pool.name for other in pools):
            raise table.error("name", f'another [[pool]] is already named "{pool.name}"')
        pools.append(pool)
    scale_sets = [
        (p.scale_set_target.lower(), p.scale_set_name.lower()) for p in pools if p.scale_set_name
    ]
    if len(set(scale_sets)) < len(scale_sets):
        raise loader.error(
            "pool", "two scale-set pools name the same scale_set_name and scale_set_target"
        )
    _check_budget(loader, pools, scheduler)
    return tuple(pools)


def _check_budget(loader: Loader, pools: list[PoolConfig], scheduler: SchedulerConfig) -> None:
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
            f"{approx_size(host_memory)} host memory = {approx_size(budget)}"
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
    pools = _pools(loader, document, github, scheduler)
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
