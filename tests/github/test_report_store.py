"""The reporter's durable memory: check-run ids survive closing (a crash) and reopening."""

from __future__ import annotations

from pathlib import Path

from agent.github.report_store import open_report_store


async def test_survives_reopen_and_keeps_the_first_start(tmp_path: Path) -> None:
    path = tmp_path / "reporter.db"
    async with open_report_store(path) as store:
        await store.mark_creating(1)
        await store.set_started(2, 100.0)
        await store.set_started(2, 200.0)
        await store.set_check_run(2, 77)
    async with open_report_store(path) as store:
        one, two = await store.get(1), await store.get(2)
        assert one is not None and one.creating and one.check_run_id is None
        assert two is not None and not two.creating
        assert (two.check_run_id, two.started_at) == (77, 100.0)
        await store.forget(2)
        assert await store.get(2) is None
        assert await store.get(3) is None
