"""The secrets store: values encrypted with Fernet in this host's local state, and an audit log.

Values live in ``<state_dir>/secrets.db`` (opened through ``agent.db``), encrypted with a key
that is either a systemd credential (``$CREDENTIALS_DIRECTORY/secrets-key``, read-only to us)
or ``<state_dir>/secrets.key``, a file of mode 0600 created on first use. Each ciphertext also
carries the secret's name, so a value copied onto another row does not decrypt as that secret.

Key rotation survives a crash at any point: the new key is written to ``secrets.key.new`` first,
every value is re-encrypted in one transaction, then the new file replaces the old. A store
opened while ``secrets.key.new`` exists finishes the rotation (it decrypts with either key).

How the values reach a runner container (stdin, then files on a tmpfs) is the container's
side: ``agent.container.secret_injection``. This module knows nothing of containers.

Every operation on a value (set, inject, remove, rotate) is recorded in the audit log with
when, which secret, which runner and job, which action and who — never the value.

With the Redis backend (a fleet), ``RedisSecretStore`` keeps the values and the audit log in
Redis instead, so a secret set on one host is injected by all; values are sealed with Fernet
*before* they are sent, and the key never leaves the hosts' key files. The hosts must share the
key (copy ``secrets.key``); Redis records the key's id (a digest) so a host with another key
refuses to start rather than fail at injection. A fleet rotation has no window in which some
host cannot decrypt: every host decrypts with ``secrets.key`` *and* ``secrets.key.new`` when
present, so the new key is first put on every host as ``secrets.key.new``, then ``rotate-key``
(on one host) makes it the fleet's key and re-encrypts every value, then each host's
``secrets.key.new`` replaces its ``secrets.key`` (docs/fleet.md "Secrets").
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
import trio
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from agent.db import Database, open_database
from agent.fleet.handle import FleetRedis

if TYPE_CHECKING:
    import redis
    import redis.client

CREDENTIAL_NAME = "secrets-key"
MAX_VALUE = 64 * 1024  # bytes
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretsError(Exception):
    """A secrets operation cannot be done; the message says why and what to do."""


class UnknownSecret(SecretsError):
    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(
            f"secret {', '.join(names)} is not in the store; add it with "
            f"`gantryd secrets set {names[0]}`"
        )
        self.names = tuple(names)


class Action(enum.StrEnum):
    SET = "set"
    INJECT = "inject"  # handed to a runner container
    REMOVE = "remove"
    ROTATE = "rotate"  # re-encrypted under a new key


@dataclass(frozen=True)
class SecretInfo:
    name: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class AuditEntry:
    at: float
    secret: str
    action: Action
    runner: str | None
    job: int | None
    actor: str


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or len(name) > 128:
        raise SecretsError(f"invalid secret name {name!r}: use letters, digits and '_'")
    return name


# -- the key ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFiles:
    """Where the key is; ``managed`` is False for a systemd credential (we cannot rotate it)."""

    path: Path
    managed: bool

    @property
    def pending(self) -> Path:
        return self.path.with_name(self.path.name + ".new")

    @classmethod
    def locate(cls, state_dir: Path, environ: Mapping[str, str] | None = None) -> KeyFiles:
        env = os.environ if environ is None else environ
        credentials = env.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / CREDENTIAL_NAME).exists():
            return cls(Path(credentials) / CREDENTIAL_NAME, managed=False)
        return cls(state_dir / "secrets.key", managed=True)


def _read_key(path: Path, *, check_mode: bool) -> Fernet:
    try:
        if check_mode and path.stat().st_mode & 0o077:
            mode = path.stat().st_mode & 0o777
            raise SecretsError(f"{path} has mode {mode:04o}; the key must be private: chmod 600")
        return Fernet(path.read_bytes().strip())
    except OSError as exc:
        raise SecretsError(f"cannot read the secrets key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise SecretsError(f"{path} is not a Fernet key (32 url-safe base64 bytes)") from exc


def _write_new_key(path: Path) -> Fernet:
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return Fernet(key)


def _load_keys(files: KeyFiles) -> tuple[Fernet, Fernet | None]:
    """(current key, pending rotation key or None); creates the key on first use."""
    if files.managed and not files.path.exists():
        try:
            files.path.parent.mkdir(parents=True, exist_ok=True)
            return _write_new_key(files.path), None
        except FileExistsError:
            pass  # created concurrently: read it
        except OSError as exc:
            raise SecretsError(f"cannot create the secrets key {files.path}: {exc}") from exc
    current = _read_key(files.path, check_mode=files.managed)
    pending = _read_key(files.pending, check_mode=True) if files.pending.exists() else None
    return current, pending


# -- the store -----------------------------------------------------------------------------


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE secrets (name TEXT PRIMARY KEY, ciphertext BLOB NOT NULL,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, secret TEXT NOT NULL,"
        " action TEXT NOT NULL, runner TEXT, job INTEGER, actor TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX audit_secret ON audit (secret, id)")


MIGRATIONS = [_schema_v1]


def _audit(
    conn: sqlite3.Connection,
    secret: str,
    action: Action,
    actor: str,
    runner: str | None = None,
    job: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO audit (at, secret, action, runner, job, actor) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), secret, action.value, runner, job, actor),
    )


class SecretStore:
    """Encrypted values and their audit log. Use ``open_secret_store``."""

    def __init__(self, db: Database, files: KeyFiles, key: Fernet) -> None:
        self._db = db
        self._files = files
        self._key = key

    def _seal(self, name: str, value: bytes) -> bytes:
        return self._key.encrypt(name.encode() + b"\0" + value)

    def _open(self, name: str, ciphertext: bytes, key: Fernet | MultiFernet | None = None) -> bytes:
        try:
            plain = (key or self._key).decrypt(ciphertext)
        except InvalidToken as exc:
            raise SecretsError(
                f"secret {name} cannot be decrypted with {self._files.path}: wrong key?"
            ) from exc
        owner, _, value = plain.partition(b"\0")
        if owner != name.encode():
            raise SecretsError(f"secret {name} holds another secret's value; set it again")
        return value

    async def set(self, name: str, value: bytes, *, actor: str) -> None:
        check_name(name)
        if not value or len(value) > MAX_VALUE:
            raise SecretsError(f"a secret value must be 1 to {MAX_VALUE} bytes")
        sealed, now = self._seal(name, value), time.time()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO secrets VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                (name, sealed, now, now),
            )
            _audit(conn, name, Action.SET, actor)

        await self._db.write(write)

    async def remove(self, name: str, *, actor: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount == 0:
                return False
            _audit(conn, name, Action.REMOVE, actor)
            return True

        return await self._db.write(write)

    async def entries(self) -> list[SecretInfo]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT name, created_at, updated_at FROM secrets ORDER BY name"
            ).fetchall()
        )
        return [SecretInfo(*row) for row in rows]

    async def reveal_for(
        self, names: Sequence[str], *, runner: str, job: int | None
    ) -> dict[str, bytes]:
        """The values a runner container gets, each access audited; all or UnknownSecret."""
        wanted = list(dict.fromkeys(names))

        def write(conn: sqlite3.Connection) -> dict[str, bytes]:
            marks = ",".join("?" * len(wanted))
            rows = conn.execute(
                f"SELECT name, ciphertext FROM secrets WHERE name IN ({marks})", wanted
            ).fetchall()
            found = dict(rows)
            missing = [n for n in wanted if n not in found]
            if missing:
                raise UnknownSecret(missing)
            for name in wanted:
                _audit(conn, name, Action.INJECT, "gantryd", runner, job)
            return found

        sealed = await self._db.write(write)
        return {name: self._open(name, sealed[name]) for name in wanted}

    async def audit(self, *, secret: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries, oldest first."""
        sql = "SELECT at, secret, action, runner, job, actor FROM audit"
        args: list[object] = []
        if secret is not None:
            sql += " WHERE secret = ?"
            args.append(secret)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = await self._db.read(lambda c: c.execute(sql, args).fetchall())
        return [AuditEntry(at, s, Action(a), r, j, who) for at, s, a, r, j, who in reversed(rows)]

    async def rotate_key(self, *, actor: str) -> int:
        """Re-encrypt every value under a fresh key; returns how many values were rotated."""
        if not self._files.managed:
            raise SecretsError(
                f"the key is the systemd credential {self._files.path}; rotate it by replacing"
                " the credential's source and restarting gantryd"
            )
        pending = self._files.pending
        if not pending.exists():
            await trio.to_thread.run_sync(_write_new_key, pending)
        new = _read_key(pending, check_mode=True)
        return await self._finish_rotation(new, actor)

    async def _finish_rotation(self, new: Fernet, actor: str) -> int:
        either = MultiFernet([new, self._key])

        def write(conn: sqlite3.Connection) -> int:
            rows = conn.execute("SELECT name, ciphertext FROM secrets").fetchall()
            for name, ciphertext in rows:
                value = self._open(name, ciphertext, either)
                resealed = new.encrypt(name.encode() + b"\0" + value)
                conn.execute("UPDATE secrets SET ciphertext = ? WHERE name = ?", (resealed, name))
                _audit(conn, name, Action.ROTATE, actor)
            return len(rows)

        count = await self._db.write(write)
        await trio.to_thread.run_sync(os.replace, self._files.pending, self._files.path)
        self._key = new
        return count


@asynccontextmanager
async def open_secret_store(
    state_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    fleet: FleetRedis | None = None,
    host: str = "",
) -> AsyncIterator[SecretStore]:
    """Open ``<state_dir>/secrets.db`` and the key (creating both on first use); with
    ``fleet``, the store in Redis instead (``RedisSecretStore``; ``host`` names this host in
    the audit log)."""
    files = KeyFiles.locate(state_dir, environ)
    if fleet is not None:
        ring = await trio.to_thread.run_sync(_Ring.load, files)
        shared = RedisSecretStore(fleet, files, ring, host=host)
        await shared.check_key()
        yield shared
        return
    current, pending = await trio.to_thread.run_sync(_load_keys, files)
    async with open_database(state_dir / "secrets.db", migrations=MIGRATIONS) as db:
        store = SecretStore(db, files, current)
        if pending is not None:  # a rotation was interrupted: finish it
            await store._finish_rotation(pending, "gantryd")
        yield store


# -- the fleet's store, in Redis ------------------------------------------------------------

AUDIT_KEPT = 100_000  # entries of the shared audit stream (approximately: MAXLEN ~)


def key_id(key: bytes) -> str:
    """A key's public name: a digest that tells keys apart and reveals nothing of them."""
    return hashlib.sha256(b"gantryd secrets key\0" + key.strip()).hexdigest()[:16]


@dataclass(frozen=True)
class _Ring:
    """This host's keys by id: ``secrets.key`` and, during a rotation, ``secrets.key.new``."""

    keys: dict[str, Fernet]
    current: str  # the id of secrets.key

    @classmethod
    def load(cls, files: KeyFiles) -> _Ring:
        _load_keys(files)  # creates secrets.key on first use, checks modes
        raw = {files.path: files.path.read_bytes().strip()}
        if files.pending.exists():
            raw[files.pending] = files.pending.read_bytes().strip()
        keys = {key_id(k): Fernet(k) for k in raw.values()}
        return cls(keys, key_id(raw[files.path]))

    def any(self) -> MultiFernet:
        return MultiFernet(list(self.keys.values()))


class RedisSecretStore(SecretStore):
    """``SecretStore`` on the fleet's Redis: the same operations and audit entries, shared by
    every host. Use ``open_secret_store(..., fleet=...)``.

    Keys: ``{prefix}:secrets`` (hash: name -> JSON of the sealed value and its times),
    ``{prefix}:secrets:key`` (the id of the key values are sealed with), ``{prefix}:secrets:audit``
    (a stream). A host re-reads its key files whenever a value does not decrypt, so a key put in
    place during a rotation is picked up without a restart.
    """

    def __init__(self, fleet: FleetRedis, files: KeyFiles, ring: _Ring, *, host: str) -> None:
        self._fleet = fleet
        self._files = files
        self._ring = ring
        self._host = host
        self._values = fleet.key("secrets")
        self._key_id = fleet.key("secrets", "key")
        self._audit_key = fleet.key("secrets", "audit")

    async def _sealing_key(self) -> Fernet:
        """The fleet's key if this host has it (after a rotation began), else secrets.key."""
        fleet_id = await self._fleet.run(lambda c: c.get(self._key_id))
        if fleet_id is not None and fleet_id not in self._ring.keys:
            await self._reload()
        return self._ring.keys.get(fleet_id or "", self._ring.keys[self._ring.current])

    async def _reload(self) -> None:
        self._ring = await trio.to_thread.run_sync(_Ring.load, self._files)

    async def _unseal(self, name: str, ciphertext: bytes) -> bytes:
        try:
            return self._open(name, ciphertext, self._ring.any())
        except SecretsError:
            await self._reload()  # a key put in place since (a rotation in progress)
            return self._open(name, ciphertext, self._ring.any())

    def _open(self, name: str, ciphertext: bytes, key: Fernet | MultiFernet | None = None) -> bytes:
        try:
            return super()._open(name, ciphertext, key or self._ring.any())
        except SecretsError as exc:
            if "decrypted" in str(exc):
                raise SecretsError(
                    f"secret {name} cannot be decrypted with this host's key ({self._files.path}"
                    f" or its .new): copy the fleet's key from another host"
                ) from exc
            raise

    def _audit_fields(
        self, secret: str, action: Action, actor: str, runner: str | None, job: int | None
    ) -> dict[str, str]:
        return {
            "at": repr(time.time()), "secret": secret, "action": action.value,
            "runner": runner or "", "job": "" if job is None else str(job), "actor": actor,
            "host": self._host,
        }  # fmt: skip

    def _add_audit(self, pipe: redis.client.Pipeline[str], fields: dict[str, str]) -> None:
        pipe.xadd(self._audit_key, fields, maxlen=AUDIT_KEPT, approximate=True)

    async def set(self, name: str, value: bytes, *, actor: str) -> None:
        check_name(name)
        if not value or len(value) > MAX_VALUE:
            raise SecretsError(f"a secret value must be 1 to {MAX_VALUE} bytes")
        key = await self._sealing_key()
        sealed = key.encrypt(name.encode() + b"\0" + value).decode()
        audit = self._audit_fields(name, Action.SET, actor, None, None)

        def write(client: redis.Redis[str]) -> None:
            old = client.hget(self._values, name)
            now = time.time()
            created = json.loads(old)["created_at"] if old else now
            record = {"ciphertext": sealed, "created_at": created, "updated_at": now}
            pipe = client.pipeline(transaction=True)
            pipe.hset(self._values, name, json.dumps(record))
            self._add_audit(pipe, audit)
            pipe.execute()

        await self._fleet.run(write)

    async def remove(self, name: str, *, actor: str) -> bool:
        audit = self._audit_fields(name, Action.REMOVE, actor, None, None)

        def write(client: redis.Redis[str]) -> bool:
            if not client.hdel(self._values, name):
                return False
            pipe = client.pipeline(transaction=True)
            self._add_audit(pipe, audit)
            pipe.execute()
            return True

        return await self._fleet.run(write)

    async def entries(self) -> list[SecretInfo]:
        rows = await self._fleet.run(lambda c: c.hgetall(self._values))
        infos = []
        for name, text in sorted(rows.items()):
            record = json.loads(text)
            infos.append(SecretInfo(name, record["created_at"], record["updated_at"]))
        return infos

    async def reveal_for(
        self, names: Sequence[str], *, runner: str, job: int | None
    ) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        texts = await self._fleet.run(lambda c: c.hmget(self._values, wanted))
        missing = [n for n, t in zip(wanted, texts, strict=True) if t is None]
        if missing:
            raise UnknownSecret(missing)
        values = {
            n: await self._unseal(n, json.loads(t or "")["ciphertext"].encode())
            for n, t in zip(wanted, texts, strict=True)
        }
        audits = [self._audit_fields(n, Action.INJECT, "gantryd", runner, job) for n in wanted]

        def write(client: redis.Redis[str]) -> None:
            pipe = client.pipeline(transaction=True)
            for fields in audits:
                self._add_audit(pipe, fields)
            pipe.execute()

        await self._fleet.run(write)
        return values

    async def audit(self, *, secret: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries (of ``secret``), oldest first."""

        def read(client: redis.Redis[str]) -> list[dict[str, str]]:
            found: list[dict[str, str]] = []
            last = "+"
            while len(found) < limit:
                batch = client.xrevrange(self._audit_key, max=last, min="-", count=500)
                for entry_id, fields in batch:
                    if entry_id != last and (secret is None or fields["secret"] == secret):
                        found.append(fields)
                if len(batch) < 500:
                    break
                last = batch[-1][0]
            return found[:limit]

        rows = await self._fleet.run(read)
        return [
            AuditEntry(
                float(f["at"]),
                f["secret"],
                Action(f["action"]),
                f["runner"] or None,
                int(f["job"]) if f["job"] else None,
                f["actor"],
            )
            for f in reversed(rows)
        ]

    async def rotate_key(self, *, actor: str) -> int:
        """Make ``secrets.key.new`` the fleet's key and re-encrypt every value under it, in
        passes until none is left under another key; returns how many were re-encrypted.

        Refused unless ``secrets.key.new`` exists: in a fleet it must be on every host first
        (each then decrypts with either key), which this host cannot do for the others."""
        await self._reload()
        if not self._files.pending.exists():
            raise SecretsError(
                f"a fleet rotation needs the new key on every host first: put one key as "
                f"{self._files.pending} (mode 0600) on each host, then rotate-key again"
            )
        new_id = key_id(await trio.to_thread.run_sync(self._files.pending.read_bytes))
        new = self._ring.keys[new_id]
        await self._fleet.run(lambda c: c.set(self._key_id, new_id))  # new sets use it now
        total = 0
        while True:
            rows = await self._fleet.run(lambda c: c.hgetall(self._values))
            count = 0
            for name, text in rows.items():
                record = json.loads(text)
                sealed = record["ciphertext"].encode()
                try:
                    self._open(name, sealed, new)
                    continue  # under the new key already
                except SecretsError:
                    pass
                value = await self._unseal(name, sealed)
                resealed = new.encrypt(name.encode() + b"\0" + value).decode()
                if await self._replace(name, text, {**record, "ciphertext": resealed}, actor):
                    count += 1
            total += count
            if count == 0:
                return total

    async def _replace(self, name: str, old: str, record: dict[str, object], actor: str) -> bool:
        """Swap one value's record if nobody changed it meanwhile (WATCH); else the next pass
        sees the change."""
        audit = self._audit_fields(name, Action.ROTATE, actor, None, None)

        from redis.exceptions import WatchError  # loaded with the client

        def write(client: redis.Redis[str]) -> bool:
            with client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._values)
                    current: Any = pipe.hget(self._values, name)  # watched: runs at once
                    if current != old:
                        return False
                    pipe.multi()
                    pipe.hset(self._values, name, json.dumps(record))
                    self._add_audit(pipe, audit)
                    pipe.execute()
                    return True
                except WatchError:
                    return False

        return await self._fleet.run(write)

    async def check_key(self) -> None:
        """Refuse a host whose keys are not the fleet's; the first host names the key."""
        current = self._ring.current
        fleet_id: Any = await self._fleet.run(
            lambda c: c.set(self._key_id, current, nx=True, get=True)
        )
        if fleet_id is not None and fleet_id not in self._ring.keys:
            raise SecretsError(
                f"this host's secrets key ({self._files.path}) is not the fleet's key "
                f"(id {fleet_id}): copy secrets.key from another host of the fleet, mode 0600"
            )
