"""What only the SQLite backend has: its schema migrations."""

from __future__ import annotations

from pathlib import Path

from agent.db import open_database
from agent.queue.sqlite import open_sqlite_queue
from agent.queue.sqlite_schema import MIGRATIONS


async def test_version_1_file_is_migrated_keeping_delivery_ids(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with open_database(path, migrations=MIGRATIONS[:1]) as db:
        await db.write(lambda c: c.execute("INSERT INTO deliveries VALUES ('d-old', 1000.0)"))
    async with open_sqlite_queue(path) as queue:
        assert not await queue.record_delivery("d-old")  # still known after the migration
        assert await queue.record_delivery("d-new")
        assert await queue.prune(older_than=2000.0) == 1  # the seen_at index is back
        assert await queue.record_delivery("d-old")
    async with open_database(path, migrations=MIGRATIONS) as db:
        sql = await db.read(
            lambda c: c.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'deliveries'"
            ).fetchone()[0]
        )
        indexes = await db.read(
            lambda c: c.execute(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'deliveries' AND type = 'index'"
            ).fetchall()
        )
    assert sql.endswith("WITHOUT ROWID")
    assert ("deliveries_seen_at",) in indexes
