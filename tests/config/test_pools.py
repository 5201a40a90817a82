"""agent/config/pools.py: the rules of a [[pool]] table and across pools, each error naming its
key; the pools' settings that have no effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, SecurityProfile, load_config
from tests.config.files import GITHUB, POOL, minimal, write

POOL_INVALID = [
    # (id, file text, key, fragment of the problem)
    (
        "size too small",
        minimal(pool='memory = "1MiB"'),
        'pool "default".memory',
        "less than the minimum, 6MiB",
    ),
    (
        "disk limit too small",
        minimal(pool='disk_limit = "512KiB"'),
        'pool "default".disk_limit',
        "less than the minimum, 1MiB",
    ),
    (
        "empty labels",
        minimal(pools='[[pool]]\nname = "default"\nlabels = []'),
        'pool "default".labels',
        "at least one label",
    ),
    (
        "missing labels",
        minimal(pools='[[pool]]\nname = "default"'),
        'pool "default".labels',
        "missing",
    ),
    (
        "duplicate label",
        minimal(pools='[[pool]]\nname = "a"\nlabels = ["linux", "Linux"]'),
        'pool "a".labels[2]',
        "listed twice",
    ),
    ("missing pool name", minimal(pools='[[pool]]\nlabels = ["x"]'), "pool[1].name", "missing"),
    (
        "bad pool name",
        minimal(pools='[[pool]]\nname = "my pool"\nlabels = ["x"]'),
        "pool[1].name",
        "not valid",
    ),
    ("duplicate pool names", minimal(extra=POOL), 'pool "default".name', "already named"),
    ("no pool", minimal(pools=""), "pool", "at least one pool"),
    (
        "pool as table",
        minimal(pools='[pool]\nname = "x"\nlabels = ["x"]'),
        "pool",
        "expected an array of tables ([[pool]]), got a table",
    ),
    (
        "min_idle > max_runners",
        minimal(pool="min_idle = 5\nmax_runners = 4"),
        'pool "default".min_idle',
        "5 is more than max_runners (4)",
    ),
    (
        "zero max_runners",
        minimal(pool="max_runners = 0"),
        'pool "default".max_runners',
        "at least 1",
    ),
    (
        "org scope without orgs",
        minimal(pool='scope = "organization"'),
        'pool "default".scope',
        "github.organizations",
    ),
    (
        "memory beyond host",
        minimal(pool='memory = "1000TiB"'),
        'pool "default".memory',
        "memory budget",
    ),
    (
        "too many cpus",
        minimal(pool="cpus = 100000.0"),
        'pool "default".cpus',
        "must be between 0.01 and",
    ),
    (
        "reserved env",
        minimal(pool='env = { ACTIONS_RUNNER_INPUT_JITCONFIG = "x" }'),
        'pool "default".env.ACTIONS_RUNNER_INPUT_JITCONFIG',
        "set by gantryd",
    ),
    (
        "reserved docker label",
        minimal(pool='docker_labels = { "io.gantryd.job" = "1" }'),
        'pool "default".docker_labels.io.gantryd.job',
        "gantryd's own",
    ),
    (
        "scale set without a target",
        minimal(pool='source = "scale-set"'),
        'pool "default".scale_set_target',
        'write "owner/name"',
    ),
    (
        "scale set at an unnamed organization",
        minimal(
            github=GITHUB + 'organizations = ["a", "b"]\n',
            pool='source = "scale-set"\nscope = "organization"',
        ),
        'pool "default".scale_set_target',
        "github.organizations lists 2",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [case[1:] for case in POOL_INVALID],
    ids=[case[0] for case in POOL_INVALID],
)
def test_invalid_pool_names_file_and_key(etc: Path, text: str, key: str, fragment: str) -> None:
    path = write(etc, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{path}: {key}: ")
    assert fragment in message


POOL_WARNINGS = [
    (
        "runner_group with repository scope",
        minimal(pool='runner_group = "ci"'),
        'pool "default".runner_group: has no effect',
    ),
    (
        "per-repository cap not below pool cap",
        minimal(pool="max_concurrent = 4"),
        'pool "default".max_concurrent: has no effect',
    ),
    (
        "pool cap above global cap",
        minimal(pool="max_runners = 20"),
        'pool "default".max_runners: 20 is more than scheduler.max_runners',
    ),
]


@pytest.mark.parametrize(
    ("text", "warning"),
    [case[1:] for case in POOL_WARNINGS],
    ids=[case[0] for case in POOL_WARNINGS],
)
def test_pool_settings_without_effect_warn(etc: Path, text: str, warning: str) -> None:
    config = load_config(write(etc, text))
    assert [w for w in config.warnings if w.startswith(warning)], config.warnings


def test_disk_limit_and_sudo_profile(etc: Path) -> None:
    config = load_config(write(etc, minimal(pool='disk_limit = "10GiB"\nsecurity = "sudo"')))
    assert config.pools[0].disk_limit == 10 * 1024**3
    assert config.pools[0].security is SecurityProfile.SUDO
    assert load_config(write(etc, minimal())).pools[0].disk_limit == 0  # unset: no limit
