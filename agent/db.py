"""SQLite connection handling shared by the queue and the local state database.

One writer connection, driven by one long-lived thread (``WorkerThread``): every write is a
``BEGIN IMMEDIATE … COMMIT`` around a plain function, so a read-modify-write can never fail
half-way with "database is locked" (a deferred ``BEGIN`` that reads first would). Keeping a single
writer connection also avoids the WAL-reset race fixed only in SQLite 3.51.3 (Debian 12 has 3.40).
Reads use a second connection, which in WAL mode sees the last committed state without waiting
for the writer.

Schemas are a list of migrations applied with sqlite-utils, numbered by their position; the
version reached is stored in ``schema_version`` and a file written by a newer gantryd is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlite_utils
import trio

from agent.storage.errors import Damaged, DiskFull, SchemaTooNew, StorageUnavailable
from agent.storage.group_commit import Entry, GroupCommit
from agent.storage.repair import quick_check
from agent.storage.worker_thread import WorkerThread

T = TypeVar("T")

Migration = Callable[[sqlite_utils.Database], None]
SYNCHRONOUS = ("full", "normal")

# Primary result codes that mean "this could not be committed", not a bug in the SQL.
_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
}


def _unavailable(path: Path, exc: sqlite3.Error) -> StorageUnavailable | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or (code & 0xFF) not in _UNAVAILABLE:
        return None
    if code & 0xFF == sqlite3.SQLITE_FULL:
        return DiskFull(str(path), str(exc))
    return StorageUnavailable(f"{path}: {exc} ({getattr(exc, 'sqlite_errorname', '?')})")


_Fn = Callable[[sqlite3.Connection], Any]


class Database:
    """An open SQLite file: one writer and one reader connection, each used by one thread at a time.

    Writes are group-committed (``agent.storage.group_commit``): writes that arrive while a
    transaction is being written share the next one (one fsync for all), each inside its own
    savepoint so a write that raises is rolled back alone. A write, once taken into a
    transaction, is not abandoned on cancellation: it finishes (commit or rollback) and reports
    its outcome before the caller sees ``Cancelled``, so a caller never mistakes a committed
    write for a lost one.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._writer_thread: WorkerThread | None = None  # started by the first write
        self._read_limiter = trio.CapacityLimiter(1)
        self._commits: GroupCommit[_Fn, Any] = GroupCommit(self._flush, name=str(path))
        self._closed = False

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside ``BEGIN IMMEDIATE … COMMIT``; roll it back if it raises.

        ``fn`` runs on the writer thread and may share its transaction with other writes: it must
        not commit, and should raise rather than leave partial changes it wants undone.
        """
        return cast(T, await self._commits.submit(fn))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the read connection (a consistent snapshot for its duration)."""
        return await trio.to_thread.run_sync(self._read_blocking, fn, limiter=self._read_limiter)

    def write_blocking(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``write`` for code already on a worker thread with the writer to itself (opening)."""
        write: Entry[_Fn, Any] = Entry(fn)
        self._flush_blocking([write])
        if write.error is not None:
            raise write.error
        return cast(T, write.result)

    async def _flush(self, batch: Sequence[Entry[_Fn, Any]]) -> None:
        if self._writer_thread is None:
            self._writer_thread = WorkerThread(f"sqlite writer {self.path.name}")
        await self._writer_thread.run(partial(self._flush_blocking, batch))

    def _flush_blocking(self, batch: Sequence[Entry[_Fn, Any]]) -> None:
        conn = self._writer
        savepoints = len(batch) > 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            for w in batch:
                if savepoints:
                    conn.execute("SAVEPOINT write")
                try:
                    w.result = w.item(conn)
                except Exception as exc:
                    w.error = exc
                    if not savepoints or not conn.in_transaction:
                        raise  # alone, or SQLite abandoned the whole transaction (disk full…)
                    conn.execute("ROLLBACK TO write")
                if savepoints:
                    conn.execute("RELEASE write")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = self._map(exc)
            for w in batch:  # nothing was committed: every write of the batch failed
                w.result = None
                if w.error is None or w.error is exc:
                    w.error = failure
        for w in batch:
            if isinstance(w.error, sqlite3.Error):
                w.error = self._map(w.error)

    def _map(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, sqlite3.Error):
            return exc
        mapped = _unavailable(self.path, exc)
        if mapped is None:
            return exc
        mapped.__cause__ = exc
        return mapped

    def _read_blocking(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            mapped = _unavailable(self.path, exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        """Close both connections once no thread is using them; later writes are refused."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._commits.aclose()  # the write in flight has finished; no other starts
            if self._writer_thread is not None:
                await self._writer_thread.aclose()
            async with self._read_limiter:
                self._reader.close()
                self._writer.close()


def _connect(path: Path, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    """Bring the schema to ``len(migrations)`` inside the caller's transaction; return it."""
    db = sqlite_utils.Database(conn)
    if "schema_version" not in db.table_names():
        db.table("schema_version").create({"id": int, "version": int}, pk="id")
        db.table("schema_version").insert({"id": 1, "version": 0})
    found = int(conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()[0])
    if found > len(migrations):
        raise SchemaTooNew(str(path), found, len(migrations))
    for step in migrations[found:]:
        step(db)
    conn.execute("UPDATE schema_version SET version = ? WHERE id = 1", (len(migrations),))
    return len(migrations)


def _open_blocking(
    path: Path, synchronous: str, busy_timeout: float, migrations: Sequence[Migration]
) -> Database:
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
    opened: list[sqlite3.Connection] = []
    try:
        opened.append(_connect(path, synchronous, busy_timeout))
        opened.append(_connect(path, synchronous, busy_timeout))
        try:
            problems = quick_check(opened[1])  # damage found now, not as 503s for ever after
        except sqlite3.DatabaseError as exc:
            problems = [f"not readable as a database ({exc})"]
        if problems:
            raise Damaged(str(path), problems)
        database = Database(path, *opened)
        database.write_blocking(lambda conn: migrate(conn, path, migrations))
    except BaseException as exc:
        for conn in opened:
            conn.close()
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):  # the header, or a page
            raise Damaged(str(path), [str(exc)]) from exc
        if isinstance(exc, sqlite3.Error):
            full = _unavailable(path, exc)
            if isinstance(full, DiskFull):
                raise full from exc
            raise StorageUnavailable(f"cannot open {path}: {exc}") from exc
        raise
    return database


@asynccontextmanager
async def open_database(
    path: Path,
    *,
    migrations: Sequence[Migration],
    synchronous: str = "full",
    busy_timeout: float = 5.0,
) -> AsyncIterator[Database]:
    """Open (creating and migrating) the SQLite file at ``path``; close it on exit.

    ``synchronous="full"`` fsyncs the WAL on every commit: a commit survives power loss.
    ``"normal"`` survives a process crash but may lose the last commits on power loss.
    """
    database = await trio.to_thread.run_sync(
        _open_blocking, Path(path), synchronous, busy_timeout, migrations
    )
    try:
        yield database
    finally:
        await database.aclose()
