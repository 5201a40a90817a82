"""agent/db.py against real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlite_utils
import trio
import trio.testing

from agent.db import open_database
from agent.storage.errors import SchemaTooNew, StorageUnavailable


def _v1(db: sqlite_utils.Database) -> None:
    db.table("items").create({"id": int, "name": str}, pk="id")


def _v2(db: sqlite_utils.Database) -> None:
    db.table("items").add_column("size", int)


async def test_pragmas_and_migrations(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with open_database(path, migrations=[_v1], synchronous="normal") as db:
        assert await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert await db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
        await db.write(lambda c: c.execute("INSERT INTO items VALUES (1, 'a')"))
    async with open_database(path, migrations=[_v1, _v2]) as db:
        assert await db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
        await db.write(lambda c: c.execute("UPDATE items SET size = 3"))
        rows = await db.read(lambda c: c.execute("SELECT * FROM items").fetchall())
        assert rows == [(1, "a", 3)]
        assert await db.read(
            lambda c: c.execute("SELECT version FROM schema_version").fetchall()
        ) == [(2,)]


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with open_database(path, migrations=[_v1, _v2]):
        pass
    with pytest.raises(SchemaTooNew, match=r"schema version 2.*supports up to 1"):
        async with open_database(path, migrations=[_v1]):
            pass


async def test_failed_write_rolls_back(tmp_path: Path) -> None:
    async with open_database(tmp_path / "s.db", migrations=[_v1]) as db:

        def half(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO items VALUES (1, 'a')")
            conn.execute("INSERT INTO items VALUES (1, 'duplicate')")

        with pytest.raises(sqlite3.IntegrityError):
            await db.write(half)
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM items").fetchone()[0]) == 0


async def test_locked_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_database(path, migrations=[_v1], busy_timeout=0.05) as db:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StorageUnavailable, match="locked"):
                await db.write(lambda c: c.execute("INSERT INTO items VALUES (1, 'a')"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        await db.write(lambda c: c.execute("INSERT INTO items VALUES (1, 'a')"))


async def test_bad_synchronous_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        async with open_database(tmp_path / "s.db", migrations=[], synchronous="off"):
            pass


async def test_concurrent_writes_share_commits_but_fail_alone(tmp_path: Path) -> None:
    async with open_database(tmp_path / "s.db", migrations=[_v1]) as db:
        outcome: dict[int, str] = {}

        async def insert(i: int) -> None:
            def fn(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO items VALUES (?, 'x')", (i,))
                if i == 3:
                    raise ValueError("rejected")

            try:
                await db.write(fn)
                outcome[i] = "ok"
            except ValueError:
                outcome[i] = "failed"

        async with trio.open_nursery() as nursery:
            for i in range(10):  # the first flush runs alone; the other nine queue behind it
                nursery.start_soon(insert, i)
        assert outcome == {i: "failed" if i == 3 else "ok" for i in range(10)}
        rows = await db.read(lambda c: c.execute("SELECT id FROM items ORDER BY id").fetchall())
        assert [r[0] for r in rows] == [i for i in range(10) if i != 3]


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    async with open_database(tmp_path / "s.db", migrations=[_v1]) as db:
        await db.write(lambda c: c.execute("INSERT INTO items VALUES (1, 'a')"))
    with pytest.raises(trio.ClosedResourceError, match="closed"):
        await db.write(lambda c: c.execute("INSERT INTO items VALUES (2, 'b')"))


async def test_close_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_database(path, migrations=[_v1]) as db:
        outcomes: list[str] = []

        async def insert(i: int) -> None:
            try:
                await db.write(lambda c: c.execute("INSERT INTO items VALUES (?, 'x')", (i,)))
                outcomes.append(f"{i} written")
            except trio.ClosedResourceError:
                outcomes.append(f"{i} refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(insert, 1)
            await trio.testing.wait_all_tasks_blocked()  # 1 is being (or has been) written
            nursery.start_soon(db.aclose)
            await trio.testing.wait_all_tasks_blocked()  # the close has begun
            nursery.start_soon(insert, 2)
        assert sorted(outcomes) == ["1 written", "2 refused"]
    async with open_database(path, migrations=[_v1]) as db:
        assert await db.read(lambda c: c.execute("SELECT id FROM items").fetchall()) == [(1,)]


async def test_a_write_cancelled_in_flight_commits_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO items VALUES (1, 'a')")
        started.set()
        release.wait()
        return "inserted"

    async with open_database(path, migrations=[_v1]) as db:
        outcome: list[str] = []
        with trio.CancelScope() as scope:

            async def cancel_once_started() -> None:
                await trio.to_thread.run_sync(started.wait)
                scope.cancel()
                release.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_once_started)
                outcome.append(await db.write(slow))  # the result arrives despite the cancel
                await trio.lowlevel.checkpoint()  # and the cancellation lands here
                pytest.fail("cancellation was lost")
        assert scope.cancelled_caught
        assert outcome == ["inserted"]
    async with open_database(path, migrations=[_v1]) as db:
        assert await db.read(lambda c: c.execute("SELECT id FROM items").fetchall()) == [(1,)]
