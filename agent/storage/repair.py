"""Checking and recovering a damaged SQLite file (``gantryd queue check`` / ``queue recover``).

Schema-agnostic, so it serves the queue and this host's other databases alike: the new file
gets the damaged one's own ``CREATE`` statements and every row that can still be read, table by
table. The damaged file is never modified: it is renamed aside with a timestamp, so nothing that
a later, better tool could read is lost. Run only while gantryd is stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"SQLite format 3\x00"
PAGE_SIZE = 4096  # SQLite's default, which gantryd never changes
SIDECARS = ("-wal", "-shm")


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """SQLite's ``quick_check`` (every page and row readable, no index cross-check): the
    problems it found, ``[]`` when the file is sound. Raises ``sqlite3.DatabaseError`` when
    the file is not readable as a database at all (its header is damaged)."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    return [] if rows == ["ok"] else rows


def check_file(path: Path) -> list[str]:
    """What is wrong with the file at ``path`` (read-only); ``[]`` when nothing."""
    if not path.exists():
        return [f"{path} does not exist"]
    try:
        with contextlib.closing(_read_only(path)) as conn:
            return quick_check(conn)
    except sqlite3.DatabaseError as exc:
        return [f"{path} cannot be read as a database: {exc}"]


@dataclass(frozen=True)
class Recovered:
    path: Path  # the new file, where the damaged one was
    kept_aside: Path  # the damaged file, renamed
    rows: dict[str, int]  # rows copied, by table
    header_rebuilt: bool  # the header was unreadable and was rebuilt (in the copy read from)


def recover_file(path: Path, *, now: float | None = None) -> Recovered:
    """Write a new database at ``path`` holding every readable row of the damaged one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".recover-") as work:
        source = Path(work) / "source.db"
        shutil.copyfile(path, source)  # read a copy: the damaged file itself stays as it is
        if Path(f"{path}-wal").exists():  # commits not yet checkpointed into the file
            shutil.copyfile(f"{path}-wal", f"{source}-wal")
        rebuilt = not _has_header(source)
        if rebuilt:
            _rebuild_header(source)
        target = Path(work) / "new.db"
        rows = _copy_readable(source, target)
        os.chmod(target, 0o600)
        os.rename(path, aside)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        os.rename(target, path)
    return Recovered(path=path, kept_aside=aside, rows=rows, header_rebuilt=rebuilt)


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _has_header(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _rebuild_header(path: Path) -> None:
    """Replace the first 100 bytes with a fresh file's, telling SQLite to size the file from
    its length (a change counter that differs from "version valid for"): the pages after the
    header, and so the rows, are read as before. The freelist is forgotten (only free pages)."""
    with tempfile.TemporaryDirectory() as work:
        fresh = Path(work) / "fresh.db"
        with contextlib.closing(sqlite3.connect(fresh)) as conn:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("CREATE TABLE t (x)")
            conn.commit()
        header = bytearray(fresh.read_bytes()[:100])
    header[24:28] = (1).to_bytes(4, "big")  # change counter
    header[92:96] = (0).to_bytes(4, "big")  # version valid for: stale, so the size is read
    header[32:40] = bytes(8)  # no freelist
    with open(path, "r+b") as f:
        f.write(header)


def _copy_readable(source: Path, target: Path) -> dict[str, int]:
    rows: dict[str, int] = {}
    with (
        contextlib.closing(sqlite3.connect(source)) as src,  # a copy: may write its -shm
        contextlib.closing(sqlite3.connect(target, isolation_level=None)) as dst,
    ):
        schema = list(
            src.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index'"
            )
        )
        dst.execute("BEGIN")
        for kind, _, sql in schema:
            if kind == "table":
                dst.execute(sql)
        for kind, name, sql in schema:
            if kind == "table":
                rows[name] = _copy_table(src, dst, name, sql)
        for kind, _, sql in schema:
            if kind != "table":
                with contextlib.suppress(sqlite3.IntegrityError):  # a unique index over damage
                    dst.execute(sql)
        dst.execute("COMMIT")
        dst.execute("PRAGMA journal_mode = WAL")
    return rows


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, sql: str) -> int:
    width = len(list(src.execute(f'PRAGMA table_info("{table}")')))
    insert = f'INSERT OR IGNORE INTO "{table}" VALUES ({", ".join("?" * width)})'
    rows = _scan(src, table) if "WITHOUT ROWID" in sql.upper() else _by_rowid(src, table)
    return sum(dst.execute(insert, row).rowcount for row in rows)


def _scan(src: sqlite3.Connection, table: str) -> Iterator[tuple[object, ...]]:
    """A table without rowids: its rows up to the first unreadable page."""
    with contextlib.suppress(sqlite3.DatabaseError):
        yield from src.execute(f'SELECT * FROM "{table}"')


def _by_rowid(src: sqlite3.Connection, table: str) -> Iterator[tuple[object, ...]]:
    """Rows in rowid order; past an unreadable stretch the scan restarts further on (by
    doubling steps), so the rows after a damaged page are still found."""
    select = f'SELECT rowid, * FROM "{table}" WHERE rowid > ? ORDER BY rowid'
    last, step = -(2**63), 1
    while True:
        try:
            for row in src.execute(select, (last,)):
                last, step = int(row[0]), 1
                yield tuple(row[1:])
            return
        except sqlite3.DatabaseError:
            if step > 2**40 or last > 2**62:
                return
            last, step = last + step, step * 2
