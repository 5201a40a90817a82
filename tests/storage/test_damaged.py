"""A damaged queue file (real bytes overwritten): start-up refuses it with exit 78, the file
named and the recovery steps; ``gantryd queue check`` finds the damage and ``gantryd queue
recover`` writes a new file keeping every readable job, the damaged one kept aside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from agent.cli import main
from agent.config import EX_CONFIG
from agent.queue.base import JobSpec, JobState
from agent.queue.sqlite import open_sqlite_queue
from agent.startup import StartupError, opened

JOBS = 300
PAGE = 4096


def spec(job_id: int) -> JobSpec:
    return JobSpec(
        job_id=job_id, run_id=job_id, run_attempt=1, repository="acme/app", installation_id=1,
        labels=("self-hosted", "linux"), pool="default", name=f"build {'x' * 200}",
        head_sha=f"{job_id:040x}",
    )  # fmt: skip


@pytest.fixture
async def queue_file(tmp_path: Path) -> Path:
    path = tmp_path / "queue.db"
    async with open_sqlite_queue(path) as queue:
        await queue.enqueue_many([spec(i) for i in range(1, JOBS + 1)])
    assert not has_wal(path)  # checkpointed on close: the rows are in the file
    return path


def has_wal(path: Path) -> bool:
    return Path(f"{path}-wal").exists()


def damage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"\xff" * 100)


def damage_last_pages(path: Path) -> None:
    size = path.stat().st_size
    assert size > 20 * PAGE
    with open(path, "r+b") as f:
        f.seek(size - 2 * PAGE)
        f.write(b"\0" * (2 * PAGE))


async def refused(path: Path) -> StartupError:
    with pytest.raises(StartupError) as caught:
        async with opened("the queue", open_sqlite_queue(path)):
            pass
    return caught.value


async def surviving_jobs(path: Path) -> set[int]:
    async with open_sqlite_queue(path) as queue:
        jobs = await queue.list_jobs([JobState.QUEUED], limit=JOBS + 1)
        return {job.spec.job_id for job in jobs}


async def check_and_recover(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    error = await refused(path)
    assert error.exit_status == EX_CONFIG
    assert str(path) in str(error) and "gantryd queue recover" in str(error)
    assert await trio.to_thread.run_sync(main, ["queue", "check", "--file", str(path)]) == 1
    capsys.readouterr()
    assert await trio.to_thread.run_sync(main, ["queue", "recover", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert [p.name for p in path.parent.glob("queue.db.damaged-*")] != []
    assert await trio.to_thread.run_sync(main, ["queue", "check", "--file", str(path)]) == 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    return out


async def test_header_damage_is_refused_and_every_job_recovered(
    queue_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage_header(queue_file)
    out = await check_and_recover(queue_file, capsys)
    assert f"kept {JOBS} job(s)" in out
    assert await surviving_jobs(queue_file) == set(range(1, JOBS + 1))


async def test_damaged_last_pages_are_refused_and_the_readable_jobs_kept(
    queue_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage_last_pages(queue_file)
    out = await check_and_recover(queue_file, capsys)
    kept = await surviving_jobs(queue_file)
    assert f"kept {len(kept)} job(s)" in out
    assert 0 < len(kept) <= JOBS
    async with open_sqlite_queue(queue_file) as queue:  # a recovered file is a working queue
        await queue.enqueue(spec(JOBS + 1))
        assert len(await queue.claim(1, lease_seconds=60)) == 1
