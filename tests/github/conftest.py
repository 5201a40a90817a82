"""A served emulator and GitHubClients against it (App and token auth)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, serve_emulator
from agent.github.auth import AppAuth, Secret, TokenAuth
from agent.github.client import GitHubClient
from tests.emulator_clock import Clock as Clock

APP_ID = 4242
INSTALLATIONS = {11: ["acme/app", "acme/lib"], 12: ["other/tool"]}


@pytest.fixture(scope="session")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(app_key: rsa.RSAPrivateKey, clock: Clock) -> Emulator:
    return Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations=INSTALLATIONS,
        clock=clock,
        client_id="Iv1.b507a08c87ecfe98",
        seed=7,
    )


@pytest.fixture
async def base_url(emulator: Emulator, nursery: trio.Nursery) -> str:
    url: str = await nursery.start(serve_emulator, emulator)
    return url


ClientFactory = Callable[..., AbstractAsyncContextManager[GitHubClient]]


@pytest.fixture
def app_client(base_url: str, app_key: rsa.RSAPrivateKey) -> Callable[..., GitHubClient]:
    """A GitHubClient for the App (iss = the App id unless ``issuer`` is given)."""

    def make(*, issuer: str = str(APP_ID), **options: object) -> GitHubClient:
        return GitHubClient(base_url, AppAuth(app_id=issuer, key=app_key), **options)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def github(app_client: Callable[..., GitHubClient]) -> AsyncIterator[GitHubClient]:
    async with app_client() as client:
        yield client


@pytest.fixture
async def token_github(emulator: Emulator, base_url: str) -> AsyncIterator[GitHubClient]:
    """A client with a fine-grained personal access token reaching installation 11's repos."""
    token = emulator.add_personal_token(11)
    async with GitHubClient(base_url, TokenAuth(Secret(token))) as client:
        yield client
