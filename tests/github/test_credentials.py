"""agent/github/credentials.py and the reload that follows them: after SIGHUP's reload the client
uses the credentials the file now names; one that cannot be loaded keeps the old ones."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import Config, load_config
from agent.daemon import Daemon
from agent.emulator import Emulator
from agent.emulator.server import build_app
from agent.github.auth import CredentialsError
from agent.github.client import GitHubClient, GitHubError, RunnerTarget
from agent.github.credentials import load_credentials
from agent.reload import LiveConfig
from agent.systemd import Notifier
from tests.test_cli import example_config

from .conftest import APP_ID
from .test_client import register
from .test_transport import Recorder

BROKEN_PEM = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


def write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def write_secret(path: Path, text: str) -> None:
    path.write_text(text + "\n")
    path.chmod(0o600)


def app_config(directory: Path, key: rsa.RSAPrivateKey) -> Config:
    write_key(directory / "app.pem", key)
    write_secret(directory / "webhook-secret", "s3cret")
    return load_config(example_config(directory, **{'app_id = "123456"': f'app_id = "{APP_ID}"'}))


def token_config(directory: Path, token: str) -> Config:
    write_secret(directory / "token", token)
    write_secret(directory / "webhook-secret", "s3cret")
    path = example_config(
        directory,
        **{
            'app_id = "123456"': 'app_id = ""',
            f'private_key_file = "{directory}/app.pem"': f'token_file = "{directory}/token"',
        },
    )
    return load_config(path)


def tokens_fetched(server: Recorder) -> int:
    return sum(path.endswith("/access_tokens") for path in server.paths)


def test_a_file_that_cannot_be_loaded_is_named_by_its_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = app_config(tmp_path, key)
    (tmp_path / "app.pem").write_text(BROKEN_PEM)  # passes the file checks, is no key
    with pytest.raises(CredentialsError) as caught:
        load_credentials(config.github)
    assert caught.value.key == "github.private_key_file"
    assert (
        str(caught.value) == f"github.private_key_file: {tmp_path}/app.pem is not a PEM private key"
    )


async def test_a_reload_with_a_new_app_key_makes_the_client_sign_with_it(
    tmp_path: Path, emulator: Emulator, app_key: rsa.RSAPrivateKey
) -> None:
    config = app_config(tmp_path, app_key)
    server = Recorder(build_app(emulator))
    credentials = load_credentials(config.github)
    transport = httpx.ASGITransport(app=server)
    async with GitHubClient("http://github.test", credentials.auth, transport=transport) as client:
        daemon = Daemon(
            live=LiveConfig(config), notifier=Notifier({}), github=client, credentials=credentials
        )
        await register(client, "before")
        assert tokens_fetched(server) == 1

        # Unchanged files: the cached installation token stays in use.
        assert daemon.reload()
        await register(client, "unchanged")
        assert tokens_fetched(server) == 1

        # A key GitHub does not know: the cached token goes with the old key, and the new key's
        # JWT is refused, so the client did sign with the new key.
        write_key(
            tmp_path / "app.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        assert daemon.reload()
        with pytest.raises(GitHubError) as caught:
            await register(client, "unknown-key")
        assert caught.value.status == 401 and caught.value.path.endswith("/access_tokens")

        # The right key again, with a new webhook secret: both are in force.
        write_key(tmp_path / "app.pem", app_key)
        write_secret(tmp_path / "webhook-secret", "n3xt")
        assert daemon.reload()
        await register(client, "after")
        assert daemon.credentials is not None
        assert [s.reveal() for s in daemon.credentials.webhook_secrets] == ["n3xt"]

        # A file that passes the checks but holds no key: the reload fails, nothing changes.
        fetched = tokens_fetched(server)
        in_force = daemon.credentials
        (tmp_path / "app.pem").write_text(BROKEN_PEM)
        assert not daemon.reload()
        assert not daemon.live.last_reload_ok
        assert daemon.credentials is in_force
        await register(client, "old-key-kept")
        assert tokens_fetched(server) == fetched
    names = {r.name for r in emulator.runners(emulator.scope_for(repository="acme/app"))}
    assert names == {"before", "unchanged", "after", "old-key-kept"}


async def test_a_reload_with_a_new_token_file_makes_the_client_use_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Installation 11's token reaches acme/app only, installation 12's other/tool only."""
    first, second = emulator.add_personal_token(11), emulator.add_personal_token(12)
    config = token_config(tmp_path, first)
    credentials = load_credentials(config.github)
    transport = httpx.ASGITransport(app=build_app(emulator))
    async with GitHubClient("http://github.test", credentials.auth, transport=transport) as client:
        daemon = Daemon(
            live=LiveConfig(config), notifier=Notifier({}), github=client, credentials=credentials
        )
        tool = RunnerTarget(repository="other/tool")
        await register(client, "first-token")
        with pytest.raises(GitHubError):
            await register(client, "unreachable", tool)

        write_secret(tmp_path / "token", second)
        assert daemon.reload()
        await register(client, "second-token", tool)
        with pytest.raises(GitHubError):
            await register(client, "no-longer", RunnerTarget(repository="acme/app"))

        (tmp_path / "token").write_text("")  # the file check refuses it: nothing changes
        assert not daemon.reload()
        await register(client, "still-second", tool)
    assert {r.name for r in emulator.runners(emulator.scope_for(repository="other/tool"))} == {
        "second-token",
        "still-second",
    }
