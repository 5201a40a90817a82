"""One Redis connection recipe for the queue, the leases, the host records and the secrets.

``redis_url`` forms (docs/configuration.md ``[queue]``, docs/fleet.md "Redis deployment"):

- ``redis://[user:password@]host:port/db`` and ``unix:///path?db=N``: one server;
- ``rediss://…``: the same over TLS, the server certificate checked against ``ca_file`` (else
  the system's CA store) and the host name;
- ``redis+sentinel://[user:password@]host:port,host:port/mastername[/db]``: ask the Sentinels
  which server is the primary, and ask again whenever a connection to it fails (a failover).
  The URL's user and password are the data servers'; Sentinels with a password of their own
  (``requirepass`` in sentinel.conf) get the one in ``sentinel_password_file``.

A password may come from ``password_file`` instead of the URL (it wins over one in the URL), so
the configuration file can stay world-readable. Neither ever reaches a log: ``redact`` is what
logs and messages show of a URL.

Reconnection: redis-py reconnects a failed connection on its next command; each command is
retried a few times with short jittered exponential backoff (``RETRY``) so a failover or a Redis
restart costs the callers a pause, not an error, when it is brief. A longer outage reaches the
callers as ``ConnectionError`` (the queue maps it to ``QueueUnavailable``,
``agent.storage.redis_handle`` to ``RedisUnavailable``): they keep serving what does not need
Redis and try again on their next pass. Only the Redis backend imports this module (redis-py is
an optional dependency).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import redis
import redis.backoff
import redis.exceptions
import redis.retry
import redis.sentinel

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
CONNECT_TIMEOUT = 5.0  # seconds to open a TCP connection (a dead host answers nothing)
# Seconds a reply may take: a server that silently vanished (no RST) fails a call after this
# instead of hanging it; longer than any BLPOP the queue parks (``wait_ready``) plus margin.
READ_TIMEOUT = 60.0
RETRIES = 4  # per command, after the first try; with the backoff below: ~1.5 s at most
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.8
HEALTH_CHECK_INTERVAL = 15  # seconds idle before a pooled connection is PINGed on checkout


class RedisUrlError(ValueError):
    """A ``redis_url`` gantryd cannot use; the message never contains the password."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"{redact(url)}: {problem}")
        self.problem = problem


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what logs and errors may show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


@dataclass(frozen=True, kw_only=True)
class Sentinels:
    """A parsed ``redis+sentinel://`` URL."""

    addresses: tuple[tuple[str, int], ...]
    master: str
    db: int


def parse_sentinel_url(url: str) -> Sentinels:
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    addresses: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RedisUrlError(url, f'"{item}" is not host:port (Sentinel port, e.g. 26379)')
        addresses.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisUrlError(url, "the path must be /mastername or /mastername/db")
    return Sentinels(
        addresses=tuple(addresses), master=unquote(path[0]), db=int(path[1]) if len(path) > 1 else 0
    )


def check_url(url: str) -> None:
    """Raise ``RedisUrlError`` unless ``url`` is a form this module connects to."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        schemes = ", ".join(f"{s}://" for s in SCHEMES)
        raise RedisUrlError(url, f"the scheme must be one of {schemes}")
    if scheme == "redis+sentinel":
        parse_sentinel_url(url)


def unreachable(exc: Exception) -> str:
    """What to say of a connection failure: redis-py's text, except that a Sentinel lookup's
    (the repr of its whole client, and the reason of each Sentinel in a suffix) is cut to what
    an operator can act on."""
    if not isinstance(exc, redis.sentinel.MasterNotFoundError):
        return f"Redis unreachable: {exc}"
    text = str(exc)
    master = text.split("'")[1] if text.count("'") >= 2 else "?"
    if "AuthenticationError" in text:
        return (
            f"the Sentinels refused gantryd's login while looking up primary {master!r}: set "
            "[queue] redis_sentinel_password_file to their requirepass"
        )
    return f"Redis unreachable: no Sentinel answered with a primary for {master!r}"


def read_password(path: Path) -> str:
    """The first line of ``path``: a password file holds nothing else (mode 0600)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def _common(
    parts: SplitResult, password_file: Path | None, ca_file: Path | None, socket_timeout: float
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": redis.retry.Retry(
            redis.backoff.EqualJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE),
            RETRIES,
        ),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    if password_file is not None:
        options["password"] = read_password(password_file)
    if ca_file is not None:
        options["ssl_ca_certs"] = os.fspath(ca_file)
    return options


class _SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """Asks the Sentinels for the primary on every reconnect.

    redis-py 8.1's ``send_packed_command`` reconnects through ``connect_check_health``, which
    skips ``SentinelManagedConnection.connect`` (the Sentinel lookup): after a failover every
    retry went back to the demoted primary ("The previous master is now a slave"). Connecting
    here first takes the lookup path again (tests/storage/test_redis_connection.py, failover).
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:  # type: ignore[attr-defined]  # (types-redis lacks it)
            self.connect()
        super().send_packed_command(command, check_health)


def redis_client(
    url: str,
    *,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    sentinel_password_file: Path | None = None,
    socket_timeout: float = READ_TIMEOUT,
) -> redis.Redis[str]:
    """A blocking client for ``url`` (no I/O yet: the first command connects).

    ``ca_file`` only matters for ``rediss://`` and ``sentinel_password_file`` only for
    ``redis+sentinel://``; with Sentinel the client asks the Sentinels for the primary on every
    new connection, so a failover is followed without a restart.
    """
    check_url(url)
    parts = urlsplit(url)
    options = _common(parts, password_file, ca_file, socket_timeout)
    if parts.scheme == "redis+sentinel":
        sentinels = parse_sentinel_url(url)
        options.pop("ssl_ca_certs", None)  # TLS to Sentinel-managed servers: not supported
        asking: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "decode_responses": True,
        }
        if sentinel_password_file is not None:
            asking["password"] = read_password(sentinel_password_file)
        sentinel = redis.sentinel.Sentinel(
            list(sentinels.addresses),
            sentinel_kwargs=asking,
            **{k: v for k, v in options.items() if k != "decode_responses"},
        )
        return cast(
            "redis.Redis[str]",
            sentinel.master_for(
                sentinels.master,
                db=sentinels.db,
                decode_responses=True,
                connection_class=_SentinelConnection,
            ),
        )
    if parts.scheme == "unix":
        options["unix_socket_path"] = unquote(parts.path)
        options["db"] = int(parse_qs(parts.query).get("db", ["0"])[0])
        options.pop("ssl_ca_certs", None)
    else:
        options["host"] = parts.hostname or "localhost"
        try:
            options["port"] = parts.port or 6379
        except ValueError:
            raise RedisUrlError(url, "the port must be a number") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise RedisUrlError(url, f'the path must be a database number, not "/{db}"')
        options["db"] = int(db or 0)
        if parts.scheme == "rediss":
            options["ssl"] = True
        else:
            options.pop("ssl_ca_certs", None)
    return cast("redis.Redis[str]", redis.Redis(**options))
