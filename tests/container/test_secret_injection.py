"""agent/container/secret_injection.py against a real container: the JIT line, then the secrets
frame on stdin; files of mode 0400 on a tmpfs, nothing in docker inspect, the logs or the
database."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import docker
import pytest
import trio

from agent.config import PoolConfig
from agent.container.docker_api import ContainerSpec, DockerAPI
from agent.container.secret_injection import (
    SECRETS_DIR,
    WRITE_SECRETS,
    injection,
    with_secrets_mount,
)
from agent.container.security import host_options
from agent.secrets import Action, open_secret_store

VALUE = b"npm_s3cr3t-VALUE-that-must-not-leak"


def _raw(path: Path) -> bytes:
    """The database file with its WAL and shm, as they lie on disk."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@pytest.mark.docker
async def test_secrets_reach_the_container_as_private_files_and_nowhere_else(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """The pool manager's channel: JIT line, then the frame on stdin; files on a tmpfs, 0400."""
    pool = PoolConfig(
        name="p",
        labels=("self-hosted",),
        network="none",
        read_only_rootfs=True,
        memory=64 * 1024**2,
        nofile=4096,
        secrets=("NPM_TOKEN",),
    )
    digest = hashlib.sha256(VALUE).hexdigest()  # the value itself must not be in the command
    check = (
        f"read -r J && {WRITE_SECRETS} && stat -c '%a %u %n' {SECRETS_DIR}/* && "
        f"grep -c ' {SECRETS_DIR} tmpfs' /proc/mounts && sha256sum {SECRETS_DIR}/NPM_TOKEN"
    )
    api = DockerAPI()
    async with open_secret_store(tmp_path) as store:
        await store.set("NPM_TOKEN", VALUE, actor="test")
        frame = await injection(store, pool.secrets, runner="gantryd-t-1", job=7)
        cid = await api.create(
            ContainerSpec(
                name=f"gantryd-secrets-test-{hashlib.md5(str(tmp_path).encode()).hexdigest()[:8]}",
                image=runner_image,
                command=("/bin/sh", "-c", check),
                labels={"io.gantryd.test": "secrets"},
                environment={},
                host=with_secrets_mount(host_options(pool), pool.secrets),
                stdin_open=True,
            )
        )
        try:
            await api.start_with_stdin(cid, b"jit-config-line\n" + frame)
            container = docker_client.containers.get(cid)
            with trio.fail_after(30):
                result = await trio.to_thread.run_sync(container.wait)
            logs = container.logs().decode()
            assert result["StatusCode"] == 0, logs
            assert f"400 1001 {SECRETS_DIR}/NPM_TOKEN" in logs and digest in logs
            assert VALUE.decode() not in logs
            inspect = json.dumps(await api.inspect(cid))
            assert VALUE.decode() not in inspect and "jit-config-line" not in inspect
            assert SECRETS_DIR in inspect  # the tmpfs mount, not its contents
        finally:
            await api.remove(cid)
            api.close()
        audit = await store.audit(secret="NPM_TOKEN")
    assert (audit[-1].action, audit[-1].runner, audit[-1].job) == (Action.INJECT, "gantryd-t-1", 7)
    assert VALUE not in _raw(tmp_path / "secrets.db")
