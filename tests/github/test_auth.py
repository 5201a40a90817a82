"""App JWTs and the installation-token cache."""

from __future__ import annotations

import base64
import json

import pytest
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agent.emulator.errors import GitHubError
from agent.emulator.jwt import verify_app_jwt
from agent.github.auth import AppAuth, Secret, make_app_jwt


def _decode(part: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return result


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_jwt_is_rs256_backdated_and_short(key: rsa.RSAPrivateKey) -> None:
    token = make_app_jwt("12345", key, now=1_000_000.0)
    header, payload, signature = token.split(".")
    assert _decode(header) == {"alg": "RS256", "typ": "JWT"}
    claims = _decode(payload)
    assert claims["iss"] == "12345"
    assert claims["iat"] == 1_000_000 - 60
    # GitHub's rule: exp no more than 10 minutes after *its* now (docs/github.md §5.1).
    assert isinstance(claims["exp"], int) and 0 < claims["exp"] - 1_000_000 <= 600
    sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    key.public_key().verify(
        sig, f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )


async def test_token_cached_until_near_expiry_and_fetched_once(key: rsa.RSAPrivateKey) -> None:
    now = [1_000_000.0]
    auth = AppAuth(app_id="1", key=key, clock=lambda: now[0])
    calls: list[int] = []

    async def fetch(installation: int, jwt: str) -> tuple[str, float]:
        calls.append(installation)
        await trio.lowlevel.checkpoint()
        return f"tok-{len(calls)}", now[0] + 3600

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(auth.installation_token, 7, fetch)
    assert calls == [7]
    assert await auth.installation_token(7, fetch) == "tok-1"
    now[0] += 3600 - 299  # inside the refresh margin
    assert await auth.installation_token(7, fetch) == "tok-2"
    auth.forget(7)
    assert await auth.installation_token(7, fetch) == "tok-3"


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"


@pytest.mark.parametrize("skew", [-59.0, 0.0, 59.0])
def test_jwt_accepted_by_github_with_its_clock_a_minute_off(
    key: rsa.RSAPrivateKey, skew: float
) -> None:
    token = make_app_jwt("Iv1.b507a08c87ecfe98", key, now=1_000_000.0)
    claims = verify_app_jwt(
        token, public_key=key.public_key(), issuers={"Iv1.b507a08c87ecfe98"}, now=1_000_000 + skew
    )
    assert claims["iss"] == "Iv1.b507a08c87ecfe98"


@pytest.mark.parametrize("skew", [-61.0, 541.0])
def test_jwt_refused_beyond_that(key: rsa.RSAPrivateKey, skew: float) -> None:
    token = make_app_jwt("1", key, now=1_000_000.0)
    with pytest.raises(GitHubError):
        verify_app_jwt(token, public_key=key.public_key(), issuers={"1"}, now=1_000_000 + skew)
