"""The fleet's secrets store in a real redis-server: shared by hosts that share the key,
sealed before it reaches Redis, rotated with no moment where a host cannot decrypt."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agent.config import QueueConfig
from agent.fleet.handle import FleetRedis
from agent.ops import protocol
from agent.ops.commands import local_secrets
from agent.secrets import Action, SecretsError, open_secret_store
from tests.queue.queue_support import RedisServer

pytestmark = pytest.mark.redis

NO_CREDENTIALS: dict[str, str] = {}


def host_dir(tmp_path: Path, name: str, key_from: Path | None = None) -> Path:
    """A host's state directory; with ``key_from``, holding a copy of that host's key."""
    state = tmp_path / name
    state.mkdir()
    if key_from is not None:
        shutil.copy(key_from / "secrets.key", state / "secrets.key")
        os.chmod(state / "secrets.key", 0o600)
    return state


def write_key(path: Path, key: bytes) -> None:
    path.write_bytes(key + b"\n")
    os.chmod(path, 0o600)


async def test_a_secret_set_on_one_host_is_revealed_on_another(
    tmp_path: Path, fleet: FleetRedis
) -> None:
    a_dir = host_dir(tmp_path, "a")
    async with open_secret_store(a_dir, environ=NO_CREDENTIALS, fleet=fleet, host="a") as a:
        await a.set("NPM_TOKEN", b"npm-s3cret-value", actor="cli uid=0")
        b_dir = host_dir(tmp_path, "b", key_from=a_dir)
        async with open_secret_store(b_dir, environ=NO_CREDENTIALS, fleet=fleet, host="b") as b:
            assert await b.reveal_for(["NPM_TOKEN"], runner="gantryd-b-01", job=7) == {
                "NPM_TOKEN": b"npm-s3cret-value"
            }
            assert [e.name for e in await b.entries()] == ["NPM_TOKEN"]
            audit = await a.audit(secret="NPM_TOKEN")
            assert [(e.action, e.runner, e.job) for e in audit] == [
                (Action.SET, None, None),
                (Action.INJECT, "gantryd-b-01", 7),
            ]
            assert await b.remove("NPM_TOKEN", actor="cli uid=0")
            assert await a.entries() == []
    raw = await fleet.run(lambda c: c.dump(fleet.key("secrets")))
    dumped = await fleet.run(lambda c: c.xrange(fleet.key("secrets", "audit")))
    assert raw is None  # removed
    assert "npm-s3cret-value" not in repr(dumped)


async def test_values_are_sealed_before_they_reach_redis(tmp_path: Path, fleet: FleetRedis) -> None:
    async with open_secret_store(
        host_dir(tmp_path, "a"), environ=NO_CREDENTIALS, fleet=fleet, host="a"
    ) as a:
        await a.set("DEPLOY_KEY", b"plaintext-marker-xyz", actor="test")
    stored = await fleet.run(lambda c: c.hgetall(fleet.key("secrets")))
    assert set(stored) == {"DEPLOY_KEY"}
    assert "plaintext-marker-xyz" not in stored["DEPLOY_KEY"]


async def test_a_host_with_another_key_refuses_to_open(tmp_path: Path, fleet: FleetRedis) -> None:
    async with open_secret_store(
        host_dir(tmp_path, "a"), environ=NO_CREDENTIALS, fleet=fleet, host="a"
    ):
        pass
    with pytest.raises(SecretsError, match="not the fleet's key"):
        async with open_secret_store(
            host_dir(tmp_path, "c"), environ=NO_CREDENTIALS, fleet=fleet, host="c"
        ):
            pass


async def test_rotation_leaves_no_host_unable_to_decrypt(tmp_path: Path, fleet: FleetRedis) -> None:
    """Two running hosts; the new key goes on both as secrets.key.new, one rotates, both keep
    revealing every value at each step, then each makes the new key its only one."""
    a_dir = host_dir(tmp_path, "a")
    async with open_secret_store(a_dir, environ=NO_CREDENTIALS, fleet=fleet, host="a") as a:
        b_dir = host_dir(tmp_path, "b", key_from=a_dir)
        async with open_secret_store(b_dir, environ=NO_CREDENTIALS, fleet=fleet, host="b") as b:
            await a.set("ONE", b"1", actor="test")
            await b.set("TWO", b"2", actor="test")

            async def both_reveal() -> None:
                for store, runner in ((a, "ra"), (b, "rb")):
                    got = await store.reveal_for(["ONE", "TWO"], runner=runner, job=None)
                    assert got == {"ONE": b"1", "TWO": b"2"}

            with pytest.raises(SecretsError, match=r"secrets\.key\.new"):
                await a.rotate_key(actor="test")  # no new key on the hosts yet
            new_key = Fernet.generate_key()
            for state in (a_dir, b_dir):
                write_key(state / "secrets.key.new", new_key)
            await both_reveal()
            assert await a.rotate_key(actor="test") == 2
            await both_reveal()  # b was never restarted: it picks up its .new file
            await b.set("THREE", b"3", actor="test")  # sealed with the fleet's new key
            for state in (a_dir, b_dir):  # the last step, host by host
                os.replace(state / "secrets.key.new", state / "secrets.key")
            await both_reveal()
            assert await a.reveal_for(["THREE"], runner="ra", job=None) == {"THREE": b"3"}
    async with open_secret_store(b_dir, environ=NO_CREDENTIALS, fleet=fleet, host="b") as fresh:
        got = await fresh.reveal_for(["ONE", "TWO", "THREE"], runner="rb", job=None)
        assert got == {"ONE": b"1", "TWO": b"2", "THREE": b"3"}  # the new key alone suffices


def test_the_cli_without_a_daemon_uses_the_fleets_store(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`gantryd secrets set` on a host whose daemon is stopped writes to Redis, not to a
    local file the other hosts never read."""
    queue = QueueConfig(backend="redis", redis_url=redis_server.url, redis_prefix="cli")
    state = host_dir(tmp_path, "a")
    local_secrets(state, protocol.set_secret("CLI_SET", b"from-the-cli"), queue)
    listed = local_secrets(state, protocol.list_secrets(), queue)
    assert [s.name for s in listed.secrets] == ["CLI_SET"]
    assert not (state / "secrets.db").exists()
    assert local_secrets(state, protocol.list_secrets()).secrets == ()  # the local store: empty
