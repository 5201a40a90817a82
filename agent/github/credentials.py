"""The credentials a configuration names, loaded together: GitHub auth and webhook secrets.

Loaded at start and again on every reload, before the new configuration is put in force: a
file that cannot be loaded refuses the whole reload, so the credentials and the configuration
in force always belong together.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import GitHubConfig
from agent.github.auth import (
    AppAuth,
    CredentialsError,
    Secret,
    TokenAuth,
    load_private_key,
    read_secret_file,
)


@dataclass(frozen=True)
class Credentials:
    auth: AppAuth | TokenAuth
    webhook_secrets: tuple[Secret, ...]  # a delivery signed with any of them is accepted


def load_credentials(github: GitHubConfig) -> Credentials:
    """Read every credentials file of ``[github]``; CredentialsError names the key and file."""
    key = "github.token_file" if github.token_file is not None else "github.private_key_file"
    try:
        if github.token_file is not None:
            auth: AppAuth | TokenAuth = TokenAuth(read_secret_file(github.token_file))
        else:
            assert github.private_key_file is not None  # guaranteed by config validation
            auth = AppAuth(app_id=github.app_id, key=load_private_key(github.private_key_file))
        key = "github.webhook_secret_files"
        secrets = tuple(read_secret_file(path) for path in github.webhook_secret_files)
    except CredentialsError as exc:
        raise CredentialsError(str(exc), key=key) from exc
    return Credentials(auth, secrets)
