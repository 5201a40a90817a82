"""How a pool's secrets reach its runner container (docs/design.md §6).

Through the same stdin stream as the JIT config: after the JIT line, ``stdin_frame`` sends one
``NAME BASE64`` line per secret, and ``WRITE_SECRETS`` in the container's command writes each to
a file of mode 0400 on a tmpfs (``SECRETS_DIR``) that disappears with the container: never an
environment variable, never in ``docker inspect``, never on the host's disk. The values come
from the encrypted store (``agent.secrets``), which audits every injection.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping, Sequence

from agent.container.security import HostOptions
from agent.secrets import SecretsError, SecretStore, check_name

SECRETS_DIR = "/run/gantryd-secrets"
SECRETS_UID = 1001  # the official runner image's `runner` user
SECRETS_TMPFS = f"rw,nosuid,nodev,noexec,size=1m,uid={SECRETS_UID},gid={SECRETS_UID},mode=0700"
# Shell run in the container after the JIT line is read from stdin: one "NAME BASE64" line per
# secret, then an empty line. printf is a shell builtin, so no value shows in a process list;
# the umask only applies in the subshell, so the job's own files keep normal modes.
WRITE_SECRETS = (
    '(umask 0377; while read -r n v && [ -n "$n" ]; do'
    f' printf %s "$v" | base64 -d > {SECRETS_DIR}/"$n" || exit 1; done)'
)


def stdin_frame(values: Mapping[str, bytes]) -> bytes:
    """The bytes after the JIT line that ``WRITE_SECRETS`` turns into files."""
    lines = [f"{check_name(n)} {base64.b64encode(v).decode('ascii')}\n" for n, v in values.items()]
    return ("".join(lines) + "\n").encode("ascii")


async def injection(
    store: SecretStore | None, names: Sequence[str], *, runner: str, job: int | None
) -> bytes:
    """What follows the JIT line on the runner's stdin: the pool's secrets, or nothing."""
    if not names:
        return b""
    if store is None:
        raise SecretsError("the pool names secrets but the secrets store is not open")
    return stdin_frame(await store.reveal_for(names, runner=runner, job=job))


def with_secrets_mount(host: HostOptions, names: Sequence[str]) -> HostOptions:
    """The pool's host options plus the tmpfs the secrets are written to, if it has any."""
    if not names:
        return host
    return dataclasses.replace(host, tmpfs={**host.tmpfs, SECRETS_DIR: SECRETS_TMPFS})
