"""``gantryd check-config``'s summary of a configuration: what the daemon would do.

Credentials are named by their files, never shown; a password in ``redis_url`` is masked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from agent.config.schema import Config, DockerMode, Scope
from agent.config.values import format_duration, format_size


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
        if pool.docker is DockerMode.DIND:
            how = "--privileged" if pool.docker_privileged else "all capabilities, unconfined"
            lines.append(
                f"    docker dind: a PRIVILEGED sidecar per runner ({how}; root-equivalent on "
                f"this host for every job), image {pool.docker_image}, "
                f"{format_size(pool.docker_memory)} memory, {pool.docker_cpus:g} CPU"
                + (f", mirror {pool.registry_mirror}" if pool.registry_mirror else "")
            )
    if config.priorities:
        lines.append(f"priorities {len(config.priorities)} rules")
    return "\n".join(lines)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
