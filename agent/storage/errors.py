"""The errors of gantryd's stored state: the job queue and this host's local databases.

They live below both ``agent.db`` and ``agent.queue`` because both raise them: a SQLite queue's
"disk full" comes from ``agent.db``, a Redis queue's "server down" from ``agent.queue.redis``,
and a caller handles the two alike. ``agent.queue.base`` names them ``QueueError`` and
``QueueUnavailable`` (the same classes, not subclasses), so an ``except QueueError`` around a
queue or runner-store call catches whichever backend failed.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of the errors of stored state (the queue's ``QueueError``)."""


class StorageUnavailable(StorageError):
    """The store could not commit (disk full, database locked too long, Redis down)."""


class DiskFull(StorageUnavailable):
    """The disk holding the store has no space left: only freeing space fixes it.

    A distinct class so intake and ``/readyz`` can name the disk, and start-up can exit 78
    (a restart on the same full disk cannot help) instead of restart-looping."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"disk full: {path}: {detail}; free space on the disk holding it")
        self.path = path


class Damaged(StorageError):
    """The file failed SQLite's integrity check: refusing to run on it (it would answer 503
    forever or lose jobs); the message says how to recover what can still be read."""

    def __init__(self, path: str, problems: list[str]) -> None:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if problems[3:] else "")
        super().__init__(
            f"{path} is damaged: {shown}. Stop gantryd, then `gantryd queue check --file {path}` "
            f"shows the damage and `gantryd queue recover --file {path}` writes a new file with "
            "every readable job (the damaged one is kept aside)"
        )
        self.path = path
        self.problems = problems


class SchemaTooNew(StorageError):
    """The database was written by a newer gantryd; refusing to touch it."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            f"{path} has schema version {found}, this gantryd supports up to {supported}; "
            "upgrade gantryd or point [queue] path at a new file"
        )
