"""agent/config/docker_keys.py: ``docker = "dind"`` and its keys, the refusal, the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, DockerMode, describe, load_config
from tests.config.files import minimal, write

DIND = 'docker = "dind"\nallow_privileged_sidecar = true'


def test_dind_is_refused_where_the_pools_profile_forbids_privileged(etc: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(etc, minimal(pool='docker = "dind"')))
    assert caught.value.key == 'pool "default".docker'
    message = str(caught.value)
    assert "privileged sidecar" in message and "allow_privileged_sidecar = true" in message


def test_dind_defaults_and_limits_count_against_the_memory_budget(etc: Path) -> None:
    pool = load_config(write(etc, minimal(pool=DIND + '\nmemory = "1GiB"'))).pools[0]
    assert pool.docker is DockerMode.DIND
    assert (pool.docker_image, pool.docker_privileged) == ("docker:dind", True)
    assert (pool.docker_memory, pool.docker_cpus, pool.docker_pids_limit) == (
        2 * 1024**3,
        1.0,
        4096,
    )
    assert pool.job_memory == 3 * 1024**3
    assert load_config(write(etc, minimal())).pools[0].job_memory == 2 * 1024**3


def test_summary_says_the_sidecar_is_privileged(etc: Path) -> None:
    text = minimal(pool=DIND + '\nregistry_mirror = "http://127.0.0.1:5000"')
    summary = describe(load_config(write(etc, text)))
    line = next(x for x in summary.splitlines() if "docker dind" in x)
    assert "PRIVILEGED sidecar" in line and "mirror http://127.0.0.1:5000" in line
    assert "docker dind" not in describe(load_config(write(etc, minimal())))


@pytest.mark.parametrize(
    ("pool", "key", "fragment"),
    [
        (DIND + '\nregistry_mirror = "mirror:5000"', "registry_mirror", "a registry URL"),
        (DIND + '\ndocker_memory = "1MiB"', "docker_memory", ""),
        (DIND + "\ndocker_pids_limit = 10", "docker_pids_limit", ""),
        ('docker = "podman"', "docker", '"podman" is not one of "none", "dind"'),
    ],
)
def test_invalid_docker_keys_name_the_key(etc: Path, pool: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(etc, minimal(pool=pool)))
    assert caught.value.key == f'pool "default".{key}'
    assert fragment in str(caught.value)


def test_docker_keys_without_dind_warn_that_they_do_nothing(etc: Path) -> None:
    config = load_config(write(etc, minimal(pool='docker_memory = "1GiB"')))
    assert any(
        "docker_memory" in w and 'no effect with docker = "none"' in w for w in config.warnings
    )
