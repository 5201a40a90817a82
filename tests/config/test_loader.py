"""agent/config/loader.py: the example file, every user error with its key, paths, warnings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agent.config import (
    ConfigError,
    GitHubConfig,
    PoolConfig,
    PoolSource,
    QueueConfig,
    SchedulerConfig,
    ServerConfig,
    load_config,
)
from tests.config.files import EXAMPLE, GITHUB, REFERENCE, example, minimal, write

# --- the example file -----------------------------------------------------------------------


def test_example_loads_with_defaults_and_no_warnings(etc: Path) -> None:
    config = load_config(example(etc))
    # A host with less than 10 GiB of memory cannot hold 4 runners of 2 GiB: that warning is fine.
    assert [w for w in config.warnings if "memory budget" not in w] == []
    assert config.server == ServerConfig()
    assert config.queue == QueueConfig()
    assert config.scheduler == SchedulerConfig()
    assert config.pools == (PoolConfig(name="default", labels=("self-hosted", "linux", "x64")),)
    assert config.github == GitHubConfig(
        app_id="123456",
        private_key_file=etc / "app.pem",
        webhook_secret_files=(etc / "webhook-secret",),
    )
    assert config.priorities == ()
    assert config.path == etc / "config.toml"


def test_example_shows_a_priority_rule_and_the_seed_names() -> None:
    text = EXAMPLE.read_text()
    assert "# [[priority]]" in text
    for seed in ("minContainers", "maxContainers", "retryAttempts", "retryDelay", "baseImage"):
        assert seed in text
        assert seed in REFERENCE.read_text()


# --- user errors: each names the file and the key -------------------------------------------

SERVER = "[server]\n"
QUEUE = "[queue]\n"
SCHEDULER = "[scheduler]\n"
NO_APP = '[github]\nwebhook_secret_file = "webhook-secret"\n'
TOKEN = '[github]\ntoken_file = "token"\n'

INVALID = [
    # (id, file text, key, fragment of the problem)
    (
        "unknown key",
        minimal(extra=SERVER + 'lisen = "0.0.0.0:80"'),
        "server.lisen",
        "did you mean listen",
    ),
    (
        "unknown table",
        minimal(extra="[scheduller]\nmax_runners = 1"),
        "scheduller",
        "did you mean scheduler",
    ),
    (
        "unknown pool key",
        minimal(pool="max_runner = 2"),
        'pool "default".max_runner',
        "max_runners",
    ),
    (
        "key in wrong table",
        minimal(extra=QUEUE + "concurrency = 2"),
        "queue.concurrency",
        "[scheduler]",
    ),
    ("seed name", minimal(pool="minContainers = 2"), 'pool "default".minContainers', "min_idle"),
    (
        "seed retryDelay",
        minimal(extra=QUEUE + "retryDelay = 30000"),
        "queue.retryDelay",
        "milliseconds",
    ),
    (
        "seed table",
        minimal(extra="[containerPool]\nmaxContainers = 3"),
        "containerPool",
        "[[pool]]",
    ),
    ("camelCase", minimal(pool="maxRunners = 3"), 'pool "default".maxRunners', "write max_runners"),
    (
        "wrong type int",
        minimal(pool='max_runners = "4"'),
        'pool "default".max_runners',
        'expected an integer, got a string ("4")',
    ),
    (
        "wrong type bool",
        minimal(pool="read_only_rootfs = 1"),
        'pool "default".read_only_rootfs',
        "expected a boolean",
    ),
    (
        "wrong type size",
        minimal(extra=SERVER + "max_body = true"),
        "server.max_body",
        "expected a size, got a boolean",
    ),
    (
        "wrong type array",
        minimal(pools='[[pool]]\nname = "default"\nlabels = "linux"'),
        'pool "default".labels',
        "expected an array",
    ),
    (
        "bad duration",
        minimal(pool='job_timeout = "10x"'),
        'pool "default".job_timeout',
        '"10x" is not a duration',
    ),
    (
        "negative duration",
        minimal(pool="job_timeout = -5"),
        'pool "default".job_timeout',
        "not a duration",
    ),
    (
        "infinite duration",
        minimal(pool="job_timeout = inf"),
        'pool "default".job_timeout',
        "not a duration",
    ),
    ("zero duration", minimal(extra=QUEUE + "lease = 0"), "queue.lease", "longer than 0"),
    ("bad size", minimal(pool='memory = "2GX"'), 'pool "default".memory', '"2GX" is not a size'),
    (
        "fractional bytes",
        minimal(pool='tmp_size = "0.5"'),
        'pool "default".tmp_size',
        "whole number of bytes",
    ),
    (
        "disk limit not a size",
        minimal(pool='disk_limit = "10 gigs"'),
        'pool "default".disk_limit',
        '"10 gigs" is not a size',
    ),
    (
        "disk limit wrong type",
        minimal(pool="disk_limit = true"),
        'pool "default".disk_limit',
        "expected a size, got a boolean",
    ),
    (
        "unknown profile",
        minimal(pool='security = "root"'),
        'pool "default".security',
        '"root" is not one of "strict", "sudo", "compat"',
    ),
    (
        "listen without port",
        minimal(extra=SERVER + 'listen = "localhost"'),
        "server.listen",
        '"host:port"',
    ),
    (
        "listen bare ipv6",
        minimal(extra=SERVER + 'listen = "::1:8080"'),
        "server.listen",
        "brackets",
    ),
    (
        "listen bad ipv4",
        minimal(extra=SERVER + 'listen = "10.0.0.300:80"'),
        "server.listen",
        "not an IPv4",
    ),
    (
        "listen big port",
        minimal(extra=SERVER + 'listen = "0.0.0.0:70000"'),
        "server.listen",
        "65535",
    ),
    (
        "listen collision",
        minimal(extra=SERVER + 'listen = "0.0.0.0:9000"\nmetrics_listen = "127.0.0.1:9000"'),
        "server.metrics_listen",
        "collides",
    ),
    (
        "deadline too long",
        minimal(extra=SERVER + 'response_deadline = "10s"'),
        "server.response_deadline",
        "shorter than 10s",
    ),
    (
        "webhook path",
        minimal(extra=SERVER + 'webhook_path = "hook"'),
        "server.webhook_path",
        "start with /",
    ),
    (
        "unknown enum",
        minimal(pool='scope = "global"'),
        'pool "default".scope',
        '"global" is not one of "repository", "organization"',
    ),
    (
        "unknown log level",
        minimal(extra=SERVER + 'log_level = "verbose"'),
        "server.log_level",
        '"debug", "info", "warning", "error"',
    ),
    (
        "unknown backend",
        minimal(extra=QUEUE + 'backend = "postgres"'),
        "queue.backend",
        '"sqlite", "redis"',
    ),
    (
        "missing key file",
        minimal(github=GITHUB.replace("app.pem", "nope.pem")),
        "github.private_key_file",
        "nope.pem does not exist",
    ),
    (
        "not a PEM",
        minimal(github=GITHUB.replace("app.pem", "token")),
        "github.private_key_file",
        "not a PEM private key",
    ),
    (
        "secret is a directory",
        minimal(github=GITHUB.replace('"webhook-secret"', '"."')),
        "github.webhook_secret_file",
        "not a regular file",
    ),
    (
        "missing token file",
        minimal(github=NO_APP + 'token_file = "nope"'),
        "github.token_file",
        "does not exist",
    ),
    ("no credentials", minimal(github=NO_APP), "github", "no GitHub credentials"),
    (
        "app and token",
        minimal(github=GITHUB + 'token_file = "token"'),
        "github.token_file",
        "not both",
    ),
    (
        "app id without key",
        minimal(github=NO_APP + "app_id = 5"),
        "github.private_key_file",
        "missing",
    ),
    (
        "key without app id",
        minimal(github=NO_APP + 'private_key_file = "app.pem"'),
        "github.app_id",
        "missing",
    ),
    (
        "no webhook secret",
        minimal(github='[github]\ntoken_file = "token"'),
        "github.webhook_secret_files",
        "missing",
    ),
    (
        "secret file and files",
        minimal(github=GITHUB + 'webhook_secret_files = ["webhook-secret"]'),
        "github.webhook_secret_file",
        "not both",
    ),
    (
        "three secrets",
        minimal(github=TOKEN + 'webhook_secret_files = ["webhook-secret", "app.pem", "token"]'),
        "github.webhook_secret_files",
        "at most 2",
    ),
    (
        "missing secret in list",
        minimal(github=TOKEN + 'webhook_secret_files = ["webhook-secret", "next"]'),
        "github.webhook_secret_files[2]",
        "does not exist",
    ),
    (
        "bad repository",
        minimal(github=GITHUB + 'repositories = ["acme"]'),
        "github.repositories[1]",
        '"owner/name"',
    ),
    (
        "bad api url",
        minimal(github=GITHUB + 'api_url = "ftp://example.com"'),
        "github.api_url",
        "not an http(s) URL",
    ),
    (
        "unset variable",
        minimal(github=GITHUB.replace('"app.pem"', '"${CREDENTIALS_DIRECTORY}/app.pem"')),
        "github.private_key_file",
        "CREDENTIALS_DIRECTORY is not set",
    ),
    ("section not a table", "server = 5\n" + minimal(), "server", "expected a table ([server])"),
    (
        "negative number",
        minimal(pool="max_concurrent = -1"),
        'pool "default".max_concurrent',
        "must not be negative, got -1",
    ),
    (
        "warm pool beyond global cap",
        minimal(pool="min_idle = 3\nmax_runners = 4", extra=SCHEDULER + "max_runners = 2"),
        "scheduler.max_runners",
        "min_idle together (3)",
    ),
    (
        "memory share",
        minimal(extra=SCHEDULER + "host_memory_share = 1.5"),
        "scheduler.host_memory_share",
        "between 0.01 and 1",
    ),
    (
        "env value type",
        minimal(pool="env = { DEBUG = 1 }"),
        'pool "default".env.DEBUG',
        "expected a string, got an integer",
    ),
    (
        "bad redis url",
        minimal(extra=QUEUE + 'backend = "redis"\nredis_url = "http://localhost"'),
        "queue.redis_url",
        "redis://",
    ),
    (
        "rule without priority",
        minimal(extra='[[priority]]\nrepository = "acme/*"'),
        "priority[1].priority",
        "missing",
    ),
    (
        "unknown source",
        minimal(pool='source = "scaleset"'),
        'pool "default".source',
        '"webhook", "scale-set"',
    ),
    (
        "rule unknown key",
        minimal(extra="[[priority]]\npriority = 1\nrepo = 'a/b'"),
        "priority[1].repo",
        "did you mean repository",
    ),
]


def test_scale_set_pools_need_no_webhook_secret(etc: Path) -> None:
    """Only scale-set pools: no webhook reaches gantryd, so no secret is asked for; the scale
    set defaults to the pool's name and the one listed organization."""
    github = GITHUB.replace('webhook_secret_file = "webhook-secret"\n', "")
    text = minimal(
        github=github + 'organizations = ["acme"]\n',
        pool='source = "scale-set"\nscope = "organization"\nrunner_group = "ci"',
    )
    pool = load_config(write(etc, text)).pools[0]
    assert (pool.source, pool.scale_set_name, pool.scale_set_target) == (
        PoolSource.SCALE_SET,
        "default",
        "acme",
    )
    with pytest.raises(ConfigError, match="webhook_secret_files: missing"):
        load_config(write(etc, minimal(github=github)))


@pytest.mark.parametrize(
    ("text", "key", "fragment"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_file_names_file_and_key(etc: Path, text: str, key: str, fragment: str) -> None:
    path = write(etc, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{path}: {key}: ")
    assert fragment in message


def test_minimal_file_is_valid(etc: Path) -> None:
    """The base of the invalid cases is itself valid, so each case fails for its own reason."""
    config = load_config(write(etc, minimal()))
    assert config.github.private_key_file == etc / "app.pem"
    assert config.github.app_id == "1"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")


def test_toml_syntax_error_gives_line_and_column(etc: Path) -> None:
    path = write(etc, minimal() + "\n[server]\nlisten = 0.0.0.0:80\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert re.search(r"invalid TOML: .*line \d+, column \d+", str(caught.value))
    assert str(path) in str(caught.value)


def test_file_not_utf8(etc: Path) -> None:
    path = etc / "config.toml"
    path.write_bytes(b'[server]\ninstance = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- paths, credentials, warnings -----------------------------------------------------------


def test_paths_are_relative_to_the_file_and_expand_variables(etc: Path) -> None:
    github = GITHUB.replace('"app.pem"', '"${CREDENTIALS_DIRECTORY}/app.pem"')
    text = minimal(github=github, extra='[server]\nstate_dir = "state"\n[queue]\npath = "q.db"')
    config = load_config(write(etc, text), environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert config.github.private_key_file == etc / "app.pem"
    assert config.server.state_dir == etc / "state"
    assert config.queue_path == etc / "q.db"


def test_two_webhook_secrets_for_rotation(etc: Path) -> None:
    (etc / "next").write_text("n3xt")
    (etc / "next").chmod(0o600)
    github = '[github]\ntoken_file = "token"\nwebhook_secret_files = ["webhook-secret", "next"]'
    config = load_config(write(etc, minimal(github=github)))
    assert config.github.webhook_secret_files == (etc / "webhook-secret", etc / "next")
    assert config.github.private_key_file is None
    assert config.github.token_file == etc / "token"


def test_empty_credentials_file(etc: Path) -> None:
    (etc / "webhook-secret").write_text("\n")
    with pytest.raises(ConfigError, match=r"github\.webhook_secret_file: .* is empty"):
        load_config(write(etc, minimal()))


WARNINGS = [
    (
        "redis key with sqlite",
        minimal(extra=QUEUE + 'redis_prefix = "x"'),
        "queue.redis_prefix: has no effect",
    ),
    (
        "sqlite key with redis",
        minimal(extra=QUEUE + 'backend = "redis"\nsynchronous = "normal"'),
        "queue.synchronous: has no effect",
    ),
    (
        "rule after a catch-all",
        minimal(extra="[[priority]]\npriority = 1\n[[priority]]\npriority = 2\nbranch = 'main'"),
        "priority[2]: has no effect",
    ),
]


@pytest.mark.parametrize(
    ("text", "warning"), [case[1:] for case in WARNINGS], ids=[case[0] for case in WARNINGS]
)
def test_settings_without_effect_warn(etc: Path, text: str, warning: str) -> None:
    config = load_config(write(etc, text))
    assert [w for w in config.warnings if w.startswith(warning)], config.warnings


def test_credentials_readable_by_others_warn(etc: Path) -> None:
    (etc / "app.pem").chmod(0o644)
    config = load_config(write(etc, minimal()))
    assert config.warnings == (
        f"github.private_key_file: {etc}/app.pem has mode 0644: group or others can use it; "
        f"chmod 600 {etc}/app.pem",
    )


def test_warnings_do_not_affect_equality(etc: Path) -> None:
    config = load_config(write(etc, minimal()))
    assert dataclasses.replace(config, warnings=("x",)) == config


def test_priority_rules_and_pool_options(etc: Path) -> None:
    text = minimal(
        pool='min_idle = 1\nmemory = "512MiB"\ncpus = 0.5\nenv = { A = "1" }\n'
        'secrets = ["NPM_TOKEN"]',
        extra="[[priority]]\npriority = 10\nrepository = 'acme/*'\nlabels = ['big']",
    )
    config = load_config(write(etc, text))
    pool = config.pools[0]
    assert (pool.min_idle, pool.memory, pool.cpus) == (1, 512 * 1024**2, 0.5)
    assert dict(pool.env) == {"A": "1"}
    assert pool.secrets == ("NPM_TOKEN",)
    assert config.priorities[0].repository == "acme/*"
    assert config.priorities[0].labels == ("big",)
    assert config.priorities[0].branch is None
