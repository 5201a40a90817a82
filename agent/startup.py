"""Start-up checks: each problem in gantryd's surroundings becomes one ``StartupError`` whose
message names the thing and the fix, and whose exit status tells systemd whether to retry.

``gantryd serve`` prints the message as one line and exits with ``exit_status``: 78 (EX_CONFIG,
the unit's ``RestartPreventExitStatus``) when only the operator can fix it, so systemd does not
restart-loop; 1 when a restart may help (Docker still starting, the queue held by another
process). Only opening is translated: errors while running are not start-up errors.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio

from agent.config import EX_CONFIG, ServerConfig
from agent.container.docker_api import DockerAPI, DockerError
from agent.queue.base import QueueError
from agent.secrets import SecretsError
from agent.storage.errors import Damaged, DiskFull

T = TypeVar("T")

EX_STARTUP = 1


class StartupError(Exception):
    """gantryd cannot start; the message is the one line the operator sees."""

    def __init__(self, message: str, *, exit_status: int = EX_STARTUP) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def check_directory(path: Path, key: str) -> None:
    """``path`` exists (created if missing) and this process may list, read and write it.

    Checked before anything opens a file in it, so the operator reads "state_dir is not
    writable" rather than SQLite's "unable to open database file"."""
    uid = os.geteuid()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(
            f"{key} {path} is not a directory; remove it or set {key}", exit_status=EX_CONFIG
        ) from None
    except OSError as exc:
        raise StartupError(
            f"cannot create {key} {path}: {exc.strerror} (running as uid {uid}); "
            f"create it for gantryd's user or set {key}",
            exit_status=EX_CONFIG,
        ) from exc
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError(
            f"{key} {path} is not readable and writable by uid {uid}; "
            f"fix its owner or mode (chown/chmod) or set {key}",
            exit_status=EX_CONFIG,
        )


STATE_DIR_MODE = 0o700
FILE_UMASK = 0o077  # state files 0600 (SQLite creates its -wal and -shm by the umask too)


def check_directories(server: ServerConfig) -> None:
    """Both directories usable; the state dir private (0700) and files made from now on
    0600, whatever umask started gantryd: outside systemd (no UMask=) the dir was 0755 and
    its databases 0644, readable by every local user (issue 13 §11)."""
    os.umask(FILE_UMASK)
    check_directory(server.state_dir, "server.state_dir")
    check_directory(server.runtime_dir, "server.runtime_dir")
    private(server.state_dir, STATE_DIR_MODE)


def private(path: Path, mode: int) -> None:
    """``path`` gets ``mode`` when this user owns it (a shared dir is left alone). Files
    already in it keep theirs: the dir's mode bars others from them, and a secrets key that
    was readable must still be reported, not quietly fixed."""
    if path.stat().st_uid == os.geteuid():
        path.chmod(mode)


async def connect_docker(base_url: str | None) -> DockerAPI:
    """A Docker client whose Engine answered a ping; the caller closes it."""
    where = base_url or "the default socket /var/run/docker.sock"
    try:
        # Building the client asks the Engine for its API version: blocking I/O, so off-loop.
        docker = await trio.to_thread.run_sync(DockerAPI, base_url)
    except DockerError as exc:
        raise StartupError(f"the Docker Engine does not answer at {where}: {exc}") from exc
    try:
        await docker.ping()
    except DockerError as exc:
        docker.close()
        raise StartupError(f"the Docker Engine does not answer at {where}: {exc}") from exc
    return docker


@asynccontextmanager
async def opened(what: str, manager: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter ``manager``, turning a failure to open into a ``StartupError`` naming ``what``;
    exceptions raised while it is open pass through unchanged."""
    async with AsyncExitStack() as stack:
        try:
            value = await stack.enter_async_context(manager)
        except SecretsError as exc:  # the key file: the operator's to fix
            raise StartupError(f"cannot open {what}: {exc}", exit_status=EX_CONFIG) from exc
        except (DiskFull, Damaged) as exc:  # a restart on the same disk or file cannot help
            raise StartupError(f"cannot open {what}: {exc}", exit_status=EX_CONFIG) from exc
        except OSError as exc:
            status = EX_CONFIG if exc.errno == errno.ENOSPC else EX_STARTUP
            raise StartupError(f"cannot open {what}: {exc}", exit_status=status) from exc
        except (QueueError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open {what}: {exc}") from exc
        yield value
