"""Verification of GitHub App JWTs, as GitHub does it (docs/github.md §5.1).

Decoded by hand (base64url ``header.payload.signature``) so the emulator depends on nothing but
``cryptography``. The messages are GitHub's own, as clients report them:

- bad signature, wrong algorithm, unknown ``iss`` (right key, wrong App id) → "A JSON web token
  could not be decoded" (octokit/auth-app.js#375: GitHub sends this for a wrong App id);
- ``exp`` in the past → "'Expiration time' claim ('exp') must be a numeric value representing
  the future time at which the assertion expires";
- ``exp`` more than 10 minutes after *GitHub's* now → "'Expiration time' claim ('exp') is too far
  in the future". The limit is on ``exp - now``, not ``exp - iat``: the docs' own example uses
  ``iat = now - 60`` and ``exp = now + 600`` (660 s apart) and is accepted;
- ``iat`` after GitHub's now → "'Issued at' claim ('iat') must be an Integer representing the time
  that the assertion was issued". GitHub allows no drift here, which is why the docs tell clients
  to back-date ``iat`` by 60 s (§5.1; microsoft/AL-Go#2289: ``iat`` 10 s ahead was refused).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from agent.emulator.errors import GitHubError

# Seconds `exp` may lie in the future (docs/github.md §5.1: "no more than 10 minutes").
MAX_LIFETIME = 600.0

NOT_DECODED = "A JSON web token could not be decoded"
EXP_IN_PAST = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at "
    "which the assertion expires"
)
EXP_TOO_FAR = "'Expiration time' claim ('exp') is too far in the future"
IAT_IN_FUTURE = (
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was "
    "issued"
)


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_app_jwt(
    token: str, *, public_key: RSAPublicKey, issuers: Collection[str], now: float
) -> dict[str, Any]:
    """Return the claims of a valid App JWT; raise a 401 `GitHubError` with GitHub's message.

    ``issuers`` holds the App id (as a string) and, if known, its client id: GitHub accepts
    either in ``iss``, the id as integer or string (docs/github.md §5.1).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise GitHubError(401, NOT_DECODED)
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error):
        raise GitHubError(401, NOT_DECODED) from None
    if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
        raise GitHubError(401, NOT_DECODED)
    signed = f"{parts[0]}.{parts[1]}".encode("ascii")
    try:
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise GitHubError(401, NOT_DECODED) from None
    if str(claims.get("iss")) not in issuers:
        raise GitHubError(401, NOT_DECODED)
    iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
    if iat is None or iat > now:
        raise GitHubError(401, IAT_IN_FUTURE)
    if exp is None or exp <= now:
        raise GitHubError(401, EXP_IN_PAST)
    if exp > now + MAX_LIFETIME:
        raise GitHubError(401, EXP_TOO_FAR)
    return claims


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
