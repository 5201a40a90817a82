"""agent.storage.redis_connection against real redis-server processes: TLS, AUTH, Sentinel
failover."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agent.queue.base import QueueUnavailable
from agent.queue.redis import open_redis_queue
from agent.storage.redis_connection import RedisUrlError, check_url, redact, redis_client
from tests.fleet.servers import (
    Server,
    make_pki,
    plain_server,
    sentinel_primary,
    sentinel_server,
    tls_server,
    wait_for,
)
from tests.queue.queue_support import spec

pytestmark = pytest.mark.redis

PASSWORD = "s3cret-pässword/with:odd@chars"


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_redact_hides_the_password_only() -> None:
    assert redact("redis://gantry:pw@10.0.0.1:6379/0") == "redis://gantry:***@10.0.0.1:6379/0"
    assert redact("rediss://:pw@h:1/0") == "rediss://:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    assert redact("redis+sentinel://:pw@a:1,b:2/m") == "redis+sentinel://:***@a:1,b:2/m"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://:pw@h/0", "scheme"),
        ("redis+sentinel://:pw@a:1,b/m", '"b" is not host:port'),
        ("redis+sentinel://:pw@a:1", "/mastername"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        check_url(url)
    assert problem in str(caught.value)
    assert "pw" not in str(caught.value)


def test_password_in_url_and_in_file(tmp_path: Path, servers: list[Server]) -> None:
    server = plain_server(tmp_path, password=PASSWORD)
    server.start()
    servers.append(server)
    quoted = PASSWORD.replace("/", "%2F").replace(":", "%3A").replace("@", "%40")
    in_url = redis_client(f"redis://:{quoted}@127.0.0.1:{server.port}/0")
    assert in_url.ping()
    in_url.close()
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    from_file = redis_client(f"redis://127.0.0.1:{server.port}/0", password_file=password_file)
    assert from_file.ping()
    from_file.close()
    without = redis_client(f"redis://127.0.0.1:{server.port}/0")
    with pytest.raises(redis.exceptions.AuthenticationError):
        without.ping()
    without.close()


def test_acl_user(tmp_path: Path, servers: list[Server]) -> None:
    server = plain_server(tmp_path, password="admin-pw")
    server.start()
    servers.append(server)
    admin = redis.Redis(host="127.0.0.1", port=server.port, password="admin-pw")
    admin.execute_command("ACL", "SETUSER", "gantry", "on", ">gantry-pw", "~*", "+@all")
    admin.close()
    client = redis_client(f"redis://gantry:gantry-pw@127.0.0.1:{server.port}/0")
    assert client.acl_whoami() == "gantry"
    client.close()


def test_tls_with_a_ca_file(tmp_path: Path, servers: list[Server]) -> None:
    pki = make_pki(tmp_path)
    server = tls_server(tmp_path, pki)
    server.start()
    servers.append(server)
    client = redis_client(f"rediss://127.0.0.1:{server.port}/0", ca_file=pki.ca_file)
    client.set("k", "v")
    assert client.get("k") == "v"
    client.close()
    untrusted = redis_client(f"rediss://127.0.0.1:{server.port}/0")  # system CAs only
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        untrusted.ping()
    untrusted.close()


async def test_queue_over_tls_with_password_file(tmp_path: Path, servers: list[Server]) -> None:
    pki = make_pki(tmp_path)
    server = tls_server(tmp_path, pki)
    server.args += ["--requirepass", PASSWORD]
    server.ping = lambda: True  # AUTH needed now: the queue's open is the check
    server.start()
    servers.append(server)
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    url = f"rediss://127.0.0.1:{server.port}/0"
    async with open_redis_queue(
        url, prefix="tls", password_file=password_file, ca_file=pki.ca_file
    ) as queue:
        await queue.enqueue(spec(1))
        assert (await queue.get(1)) is not None


async def test_secrets_never_reach_the_log(
    tmp_path: Path, servers: list[Server], caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password and an unreachable server: the errors raised and logged carry neither
    the URL's password nor the file's."""
    server = plain_server(tmp_path, password="right-one")
    server.start()
    servers.append(server)
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "pw"
    password_file.write_text("file-secret-123")
    errors: list[str] = []
    for url, pw_file in (
        (f"redis://:url-secret-456@127.0.0.1:{server.port}/0", None),
        (f"redis://127.0.0.1:{server.port}/0", password_file),
        ("redis://:url-secret-456@127.0.0.1:1/0", None),
    ):
        with pytest.raises(QueueUnavailable) as caught:
            async with open_redis_queue(url, prefix="x", password_file=pw_file):
                pass
        errors.append(repr(caught.value) + repr(caught.value.__cause__))
    text = "\n".join(errors) + caplog.text
    assert "url-secret-456" not in text
    assert "file-secret-123" not in text


async def test_sentinel_failover_is_followed(tmp_path: Path, servers: list[Server]) -> None:
    """A primary, a replica and a Sentinel; the queue keeps working across SENTINEL FAILOVER
    and ends up writing to the former replica."""
    (tmp_path / "p").mkdir()
    primary = plain_server(tmp_path / "p")
    primary.start()
    servers.append(primary)
    (tmp_path / "r").mkdir()
    replica = plain_server(tmp_path / "r", "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    servers.append(replica)
    (tmp_path / "s").mkdir()
    sentinel = sentinel_server(tmp_path / "s", primary.port, "gantrymaster")
    sentinel.start()
    servers.append(sentinel)

    def replica_known() -> bool:
        probe = redis.Redis(host="127.0.0.1", port=sentinel.port, decode_responses=True)
        try:
            replicas = probe.execute_command("SENTINEL", "REPLICAS", "gantrymaster")
        finally:
            probe.close()
        return any(r.get("master-link-status") == "ok" for r in replicas)

    def failover_accepted() -> bool:
        """The Sentinel refuses (NOGOODSLAVE) until it has the replica's INFO since the link
        came up; asking again is what an operator would do."""
        probe = redis.Redis(host="127.0.0.1", port=sentinel.port)
        try:
            probe.execute_command("SENTINEL", "FAILOVER", "gantrymaster")
            return True
        except redis.exceptions.ResponseError as exc:
            if "NOGOODSLAVE" not in str(exc):
                raise
            return False
        finally:
            probe.close()

    wait_for(replica_known, what="the Sentinel to discover the replica")
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/gantrymaster/0"
    async with open_redis_queue(url, prefix="sent") as queue:
        await queue.enqueue(spec(1))
        wait_for(failover_accepted, within=30, what="the Sentinel to accept SENTINEL FAILOVER")
        wait_for(
            lambda: sentinel_primary(sentinel.port, "gantrymaster") == ("127.0.0.1", replica.port),
            what="the Sentinel to promote the replica",
        )

        def roles() -> tuple[str, str]:
            found = []
            for port in (primary.port, replica.port):
                client = redis.Redis(host="127.0.0.1", port=port)
                found.append(str(client.info("replication")["role"]))
                client.close()
            return found[0], found[1]

        # Until the Sentinel demotes the old primary it still takes writes, and loses them when
        # it resyncs (Redis replication is asynchronous: docs/fleet.md "Redis deployment").
        wait_for(lambda: roles() == ("slave", "master"), what="the roles to swap")
        await queue.enqueue(spec(2))  # reconnects to the new primary (retries on the way)
        assert (await queue.get(1)) is not None  # replicated before the failover
        assert (await queue.get(2)) is not None
    direct = redis.Redis(host="127.0.0.1", port=replica.port, decode_responses=True)
    assert direct.hget("{sent}:job:2", "state") is not None
    direct.close()


async def test_sentinels_with_a_password_of_their_own(
    tmp_path: Path, servers: list[Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Sentinels with ``requirepass`` and a primary with another password: the URL's password
    is the primary's, ``sentinel_password_file`` the Sentinels'; without it the queue cannot
    open, and neither password reaches the error or the log."""
    (tmp_path / "p").mkdir()
    primary = plain_server(tmp_path / "p", password="data-pw-1")
    primary.start()
    servers.append(primary)
    (tmp_path / "s").mkdir()
    sentinel = sentinel_server(
        tmp_path / "s",
        primary.port,
        "gantrymaster",
        password="sentinel-pw-2",
        primary_password="data-pw-1",
    )
    sentinel.start()
    servers.append(sentinel)
    sentinel_file = tmp_path / "sentinel-password"
    sentinel_file.write_text("sentinel-pw-2\n")
    sentinel_file.chmod(0o600)
    url = f"redis+sentinel://:data-pw-1@127.0.0.1:{sentinel.port}/gantrymaster/0"

    with pytest.raises(QueueUnavailable) as caught:
        async with open_redis_queue(url, prefix="sentauth"):
            pass
    assert "redis_sentinel_password_file" in str(caught.value)  # says what to set
    shown = f"{caught.value!r} {caught.value.__cause__!r} {caplog.text}"
    assert "data-pw-1" not in shown and "sentinel-pw-2" not in shown

    async with open_redis_queue(
        url, prefix="sentauth", sentinel_password_file=sentinel_file
    ) as queue:
        await queue.enqueue(spec(7))
        assert (await queue.get(7)) is not None
    direct = redis.Redis(host="127.0.0.1", port=primary.port, password="data-pw-1")
    assert direct.hget("{sentauth}:job:7", "state") is not None
    direct.close()
