"""Configuration files for the tests: the shipped example and a small valid file to edit."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"


def write(etc: Path, text: str) -> Path:
    path = etc / "config.toml"
    path.write_text(text)
    return path


def example(etc: Path) -> Path:
    return write(etc, EXAMPLE.read_text().replace("/etc/gantryd/", f"{etc}/"))


GITHUB = """
[github]
app_id = 1
private_key_file = "app.pem"
webhook_secret_file = "webhook-secret"
"""
POOL = """
[[pool]]
name = "default"
labels = ["self-hosted", "linux"]
"""


def minimal(*, github: str = GITHUB, pool: str = "", extra: str = "", pools: str = POOL) -> str:
    """A small valid file (relative credentials paths), with lines added to its tables."""
    return f"{github}\n{pools}{pool}\n{extra}\n"
