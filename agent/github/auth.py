"""GitHub authentication: App JWTs, installation tokens, or a plain token.

A GitHub App signs a short JWT (RS256, ``iat`` 60 s in the past to absorb clock drift, ``exp``
"no more than 10 minutes into the future"; docs/github.md §5.1) and trades it for an installation
token that lasts an hour. ``iss`` is the App id or the client id (both accepted, §5.1).
Tokens are cached per installation and refreshed a few minutes before they expire, so a request
never leaves with a token that dies in flight.

Credentials come from files; their contents never reach a log or a repr.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BACKDATE = 60.0  # seconds; GitHub's recommendation against clock drift
# GitHub's rule is on exp - *GitHub's* now ("must be no more than 10 minutes into the future",
# docs.github.com "Generating a JSON Web Token (JWT) for a GitHub App"; the docs' own example
# has iat = now - 60 and exp = now + 600), not on exp - iat. exp = now + 540 leaves 60 s for a
# clock running ahead of GitHub's, as the back-dated iat does for one running behind.
JWT_LIFETIME = 540.0  # seconds after our now
TOKEN_REFRESH_MARGIN = 300.0  # refresh an installation token this long before it expires


class CredentialsError(Exception):
    """A credentials file is missing, unreadable or not what it should be; ``key`` is the
    setting that names the file, when known."""

    def __init__(self, problem: str, *, key: str = "") -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.problem = problem
        self.key = key


class Secret:
    """A string that never shows itself in a repr or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('[secure]')"

    __str__ = __repr__


def read_secret_file(path: Path) -> Secret:
    """Read a one-value credentials file (token, webhook secret), stripped of whitespace."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise CredentialsError(f"{path} is empty")
    return Secret(value)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise CredentialsError(f"{path} is not a PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialsError(f"{path} is not an RSA key (GitHub App keys are RSA)")
    return key


def make_app_jwt(app_id: str, key: rsa.RSAPrivateKey, *, now: float) -> str:
    """An RS256 JWT identifying the App (``app_id``: App id or client id) for JWT_LIFETIME s."""
    header = {"alg": "RS256", "typ": "JWT"}
    payload = {"iat": int(now - JWT_BACKDATE), "exp": int(now + JWT_LIFETIME), "iss": app_id}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


@dataclass
class _CachedToken:
    token: Secret
    expires_at: float


TokenFetcher = Callable[[int, str], Awaitable[tuple[str, float]]]
"""(installation_id, app_jwt) -> (token, expires_at unix seconds); the client provides it."""


@dataclass
class AppAuth:
    """GitHub App credentials and the installation-token cache."""

    app_id: str
    key: rsa.RSAPrivateKey = field(repr=False)
    clock: Callable[[], float] = time.time
    _tokens: dict[int, _CachedToken] = field(default_factory=dict, repr=False)
    _locks: dict[int, trio.Lock] = field(default_factory=dict, repr=False)

    def app_jwt(self) -> str:
        return make_app_jwt(self.app_id, self.key, now=self.clock())

    async def installation_token(
        self, installation_id: int, fetch: TokenFetcher, *, force: bool = False
    ) -> str:
        """A valid token for the installation, fetched once however many tasks ask at once."""
        lock = self._locks.setdefault(installation_id, trio.Lock())
        async with lock:
            cached = self._tokens.get(installation_id)
            if (
                not force
                and cached is not None
                and cached.expires_at - TOKEN_REFRESH_MARGIN > self.clock()
            ):
                return cached.token.reveal()
            token, expires_at = await fetch(installation_id, self.app_jwt())
            self._tokens[installation_id] = _CachedToken(Secret(token), expires_at)
            return token

    def forget(self, installation_id: int) -> None:
        """Drop a token GitHub refused (401) so the next call fetches a new one."""
        self._tokens.pop(installation_id, None)


@dataclass(frozen=True)
class TokenAuth:
    """A personal access token (classic or fine-grained) read from a file."""

    token: Secret


def same_credentials(a: AppAuth | TokenAuth, b: AppAuth | TokenAuth) -> bool:
    """Whether two credentials are the same App id and key, or the same token (a reload that
    re-reads unchanged files keeps the client's cached installation tokens)."""
    if isinstance(a, TokenAuth) and isinstance(b, TokenAuth):
        return hmac.compare_digest(a.token.reveal().encode(), b.token.reveal().encode())
    if isinstance(a, AppAuth) and isinstance(b, AppAuth):
        return a.app_id == b.app_id and a.key.private_numbers() == b.key.private_numbers()
    return False


def parse_github_time(value: str) -> float:
    """GitHub's ISO 8601 timestamps ('2026-01-01T00:00:00Z') as unix seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
