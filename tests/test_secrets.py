"""agent/secrets.py: the encrypted store, key rotation and the audit log (the channel into a
container: tests/container/test_secret_injection.py)."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agent.secrets import Action, SecretsError, UnknownSecret, open_secret_store

VALUE = b"npm_s3cr3t-VALUE-that-must-not-leak"


def _raw(path: Path) -> bytes:
    """The database file with its WAL and shm, as they lie on disk."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_the_store_knows_nothing_of_containers() -> None:
    """Injection lives in agent.container.secret_injection: the store imports nothing of it."""
    code = (
        "import sys, agent.secrets; "
        "print(sorted(m for m in sys.modules if m.startswith('agent.container')))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert done.stdout.strip() == "[]"


async def test_values_are_encrypted_audited_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_secret_store(tmp_path) as store:
        await store.set("NPM_TOKEN", VALUE, actor="test")
        await store.set("OTHER", b"x", actor="test")
        assert [e.name for e in await store.entries()] == ["NPM_TOKEN", "OTHER"]
        values = await store.reveal_for(["NPM_TOKEN"], runner="gantryd-h-1", job=42)
        assert values == {"NPM_TOKEN": VALUE}
        with pytest.raises(UnknownSecret, match="MISSING is not in the store"):
            await store.reveal_for(["NPM_TOKEN", "MISSING"], runner="r", job=1)
        assert await store.remove("OTHER", actor="test")
        assert not await store.remove("OTHER", actor="test")
        audit = await store.audit()
    assert [(a.secret, a.action) for a in audit] == [
        ("NPM_TOKEN", Action.SET),
        ("OTHER", Action.SET),
        ("NPM_TOKEN", Action.INJECT),
        ("OTHER", Action.REMOVE),
    ]
    assert (audit[2].runner, audit[2].job, audit[2].actor) == ("gantryd-h-1", 42, "gantryd")
    assert VALUE not in _raw(tmp_path / "secrets.db")
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    assert VALUE.decode() not in caplog.text


async def test_rotation_reencrypts_and_an_interrupted_one_is_finished(tmp_path: Path) -> None:
    async with open_secret_store(tmp_path) as store:
        await store.set("A", b"alpha", actor="test")
        old_key = (tmp_path / "secrets.key").read_bytes()
        assert await store.rotate_key(actor="test") == 1
        assert (tmp_path / "secrets.key").read_bytes() != old_key
        assert not (tmp_path / "secrets.key.new").exists()
        assert await store.reveal_for(["A"], runner="r", job=None) == {"A": b"alpha"}
    # A crash after writing the new key, before re-encrypting: the next open finishes the job.
    pending = tmp_path / "secrets.key.new"
    pending.write_bytes(Fernet.generate_key())
    pending.chmod(0o600)
    new_key = pending.read_bytes()
    async with open_secret_store(tmp_path) as store:
        assert await store.reveal_for(["A"], runner="r", job=None) == {"A": b"alpha"}
    assert (tmp_path / "secrets.key").read_bytes() == new_key and not pending.exists()


async def test_key_problems_are_clear_errors(tmp_path: Path) -> None:
    async with open_secret_store(tmp_path) as store:
        await store.set("A", b"alpha", actor="test")
    (tmp_path / "secrets.key").chmod(0o644)
    with pytest.raises(SecretsError, match=r"mode 0644.*chmod 600"):
        async with open_secret_store(tmp_path):
            pass
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "secrets-key").write_bytes((tmp_path / "secrets.key").read_bytes())
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    async with open_secret_store(tmp_path, environ=env) as store:
        assert await store.reveal_for(["A"], runner="r", job=None) == {"A": b"alpha"}
        with pytest.raises(SecretsError, match="systemd credential"):
            await store.rotate_key(actor="test")
    (credentials / "secrets-key").write_bytes(b"not a key")
    with pytest.raises(SecretsError, match="not a Fernet key"):
        async with open_secret_store(tmp_path, environ=env):
            pass
    (tmp_path / "secrets.key").chmod(0o600)
    async with open_secret_store(tmp_path) as store:
        with pytest.raises(SecretsError, match="invalid secret name"):
            await store.set("bad-name", b"v", actor="test")


async def test_a_row_copied_onto_another_name_does_not_decrypt(tmp_path: Path) -> None:
    async with open_secret_store(tmp_path) as store:
        await store.set("A", b"alpha", actor="test")
        await store.set("B", b"beta", actor="test")
    with sqlite3.connect(tmp_path / "secrets.db") as conn:
        conn.execute(
            "UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'A')"
            " WHERE name = 'B'"
        )
    conn.close()
    async with open_secret_store(tmp_path) as store:
        with pytest.raises(SecretsError, match="another secret's value"):
            await store.reveal_for(["B"], runner="r", job=None)
