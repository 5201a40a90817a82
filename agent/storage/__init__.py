"""Plumbing shared by every store: the SQLite databases (``agent.db``) and the job queue.

Layering: ``errors`` (no I/O), ``worker_thread`` and ``group_commit`` (trio only) import nothing
of gantryd; ``agent.db`` and ``agent.queue`` import them, never the other way round.
"""

from __future__ import annotations

from agent.storage.errors import Damaged as Damaged
from agent.storage.errors import DiskFull as DiskFull
from agent.storage.errors import SchemaTooNew as SchemaTooNew
from agent.storage.errors import StorageError as StorageError
from agent.storage.errors import StorageUnavailable as StorageUnavailable
from agent.storage.group_commit import Entry as Entry
from agent.storage.group_commit import GroupCommit as GroupCommit
from agent.storage.worker_thread import WorkerThread as WorkerThread
