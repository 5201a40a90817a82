"""The ``[[pool]]`` tables: one validator per pool, then the checks across pools.

Split from the file loader because pools are most of the file's keys and rules: a pool's
labels, scope and source (a scale-set pool's name and target), warm runners, limits and
container options, then names and scale sets unique across pools, and ``_check_budget`` against
the scheduler's runner cap and the host's memory. Errors and warnings go through the ``Loader``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from agent.config._table import Loader, Table, array_of_tables
from agent.config.docker_keys import docker_keys
from agent.config.schema import GitHubConfig, PoolConfig, PoolSource, SchedulerConfig, Scope
from agent.config.values import (
    NAME,
    NAME_RULE,
    ORGANIZATION,
    REPOSITORY,
    approx_size,
    format_size,
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_ENV_PREFIX = "ACTIONS_RUNNER_INPUT_"  # the JIT config travels this way, set by gantryd
_RESERVED_LABEL_PREFIX = "io.gantryd."
_DOCKER_MIN_MEMORY = 6 * 1024**2  # Docker refuses smaller memory limits
_MIN_DISK_LIMIT = 1024**2  # below this not even the runner's own files fit
_MAX_RUNNER_LABELS = 100  # generate-jitconfig accepts 1-100 labels


def _pool(t: Table, github: GitHubConfig) -> PoolConfig:
    name = t.raw.get("name")
    if isinstance(name, str) and NAME.fullmatch(name):
        t.where = f'pool "{name}"'
    t.check_keys("pool")
    t.required("name", 'every [[pool]] needs a name, e.g. name = "default"')
    name = t.string("name", "", pattern=NAME, rule=NAME_RULE)
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
        "warm_repositories", pattern=REPOSITORY, rule='write "owner/name"'
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
        **docker_keys(t, d),
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
        if not ORGANIZATION.fullmatch(target):
            raise t.error(
                "scale_set_target",
                f'"{target}" is not an organization login (scope = "organization")',
            )
    elif not REPOSITORY.fullmatch(target):
        raise t.error(
            "scale_set_target",
            ("missing; " if not target else f'"{target}" is not valid: ')
            + 'a scope = "repository" scale set registers in one repository: write "owner/name"',
        )
    return scale_set_name, target


def parse_pools(
    loader: Loader,
    document: Mapping[str, object],
    github: GitHubConfig,
    scheduler: SchedulerConfig,
) -> tuple[PoolConfig, ...]:
    """Every ``[[pool]]`` table, validated, then checked together and against the budget."""
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
        if pool.job_memory > budget:
            raise loader.error(
                f"{where}.memory" + (" + docker_memory" if pool.job_memory != pool.memory else ""),
                f"{format_size(pool.job_memory)} is more than the "
                f"memory budget ({share}): no runner would ever start",
            )
        if pool.job_memory * pool.max_runners > budget:
            loader.warn(
                f"{where}.max_runners",
                f"only {budget // pool.job_memory} runners of "
                f"{format_size(pool.job_memory)} fit the memory budget ({share})",
            )
