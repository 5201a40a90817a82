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
"""

from __future__ import annotations

import enum
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
import trio
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from agent.db import Database, open_database

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
    state_dir: Path, *, environ: Mapping[str, str] | None = None
) -> AsyncIterator[SecretStore]:
    """Open ``<state_dir>/secrets.db`` and the key (creating both on first use)."""
    files = KeyFiles.locate(state_dir, environ)
    current, pending = await trio.to_thread.run_sync(_load_keys, files)
    async with open_database(state_dir / "secrets.db", migrations=MIGRATIONS) as db:
        store = SecretStore(db, files, current)
        if pending is not None:  # a rotation was interrupted: finish it
            await store._finish_rotation(pending, "gantryd")
        yield store
