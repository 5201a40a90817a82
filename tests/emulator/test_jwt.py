"""App JWT verification (agent/emulator/jwt.py), with GitHub's messages (docs/github.md §5.1)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import jwt as jwt_module
from agent.emulator.errors import GitHubError
from agent.emulator.jwt import verify_app_jwt

from .conftest import APP_ID, app_jwt, sign_jwt


def verify(key: rsa.RSAPrivateKey, token: str, now: float) -> dict[str, object]:
    return verify_app_jwt(token, public_key=key.public_key(), issuers={str(APP_ID)}, now=now)


def rejected(key: rsa.RSAPrivateKey, token: str, now: float) -> str:
    with pytest.raises(GitHubError) as caught:
        verify(key, token, now)
    assert caught.value.status == 401
    return caught.value.message


def test_docs_recipe_is_accepted(app_key: rsa.RSAPrivateKey) -> None:
    # iat = now - 60, exp = now + 600: 660 s apart, and GitHub accepts it.
    now = time.time()
    assert verify(app_key, app_jwt(app_key, now), now)["iss"] == APP_ID


def test_iss_may_be_a_string(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    verify(app_key, app_jwt(app_key, now, iss=str(APP_ID)), now)


def test_wrong_key(app_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    assert rejected(app_key, app_jwt(other, now), now) == jwt_module.NOT_DECODED


def test_wrong_app_id(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    assert rejected(app_key, app_jwt(app_key, now, iss=APP_ID + 1), now) == jwt_module.NOT_DECODED


def test_expired(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    token = app_jwt(app_key, now, iat=int(now) - 700, exp=int(now) - 100)
    assert rejected(app_key, token, now) == jwt_module.EXP_IN_PAST


def test_iat_in_the_future(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    token = app_jwt(app_key, now, iat=int(now) + 30, exp=int(now) + 300)
    assert rejected(app_key, token, now) == jwt_module.IAT_IN_FUTURE


def test_exp_more_than_ten_minutes_ahead(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    token = app_jwt(app_key, now, iat=int(now) - 60, exp=int(now) + 700)
    assert rejected(app_key, token, now) == jwt_module.EXP_TOO_FAR


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "e30.e30.", "x.y"],
)
def test_garbage(app_key: rsa.RSAPrivateKey, token: str) -> None:
    assert rejected(app_key, token, time.time()) == jwt_module.NOT_DECODED


def test_algorithm_must_be_rs256(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    claims = {"iat": int(now) - 60, "exp": int(now) + 500, "iss": APP_ID}
    token = sign_jwt(app_key, claims, alg="none")
    assert rejected(app_key, token, now) == jwt_module.NOT_DECODED


def test_claims_must_be_numbers(app_key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    token = app_jwt(app_key, now, exp=str(int(now) + 500))
    assert rejected(app_key, token, now) == jwt_module.EXP_IN_PAST
