"""Emulator fixtures: an App key, JWTs signed the way a client signs them, a served emulator."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypercorn.config import Config
from hypercorn.trio import serve

from agent.emulator import Emulator, serve_emulator
from agent.emulator.asgi import App, Request, Response, route
from agent.emulator.webhooks import Hook, Outgoing
from tests.emulator_clock import Clock as Clock

APP_ID = 4242
INSTALLATIONS = {
    11: ["acme/app", "acme/lib"],
    12: ["other/tool"],
}


@pytest.fixture(scope="session")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any], *, alg: str = "RS256") -> str:
    """An RS256 JWT as GitHub's docs build one (docs/github.md §5.1)."""
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


def app_jwt(key: rsa.RSAPrivateKey, now: float | None = None, **override: Any) -> str:
    """The docs' recipe: ``iat`` 60 s in the past, ``exp`` 10 minutes ahead, ``iss`` the App."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"iat": int(now) - 60, "exp": int(now) + 600, "iss": APP_ID}
    claims.update(override)
    return sign_jwt(key, claims)


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
        seed=1,
    )


@pytest.fixture
async def base_url(emulator: Emulator, nursery: trio.Nursery) -> str:
    url: str = await nursery.start(serve_emulator, emulator)
    return url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def token_for(emulator: Emulator, app_key: rsa.RSAPrivateKey, clock: Clock) -> Callable[[int], str]:
    """An installation token obtained through the Python API (the REST path is tested apart)."""

    def issue(installation_id: int) -> str:
        return emulator.issue_token(app_jwt(app_key, clock.now), installation_id).token

    return issue


@dataclass
class Receiver:
    url: str = ""
    status: int = 200
    received: list[Request] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def wait_for(self, count: int) -> list[Request]:
        with trio.fail_after(10):
            while len(self.received) < count:
                await self.changed.wait()
                self.changed = trio.Event()
        return self.received


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    """A webhook receiver on loopback that records what it is sent."""
    state = Receiver()

    async def hook(request: Request) -> Response:
        state.received.append(request)
        state.changed.set()
        return Response(status=state.status)

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(serve, App([route("POST", "/hook", hook)]), config)
    state.url = f"{binds[0]}/hook"
    return state


def sent(hook: Hook) -> list[Outgoing]:
    """What the emulator has queued for ``hook`` and not yet sent (an emulator not running
    keeps every delivery in the hook's outbox), in order."""
    found = []
    while True:
        try:
            found.append(hook.outbox_receive.receive_nowait())
        except trio.WouldBlock:
            return found


async def jit_config(http: httpx.AsyncClient, app_key: rsa.RSAPrivateKey, name: str) -> str:
    """The gantryd path: App JWT → installation token → repository JIT config (REST)."""
    jwt = {"Authorization": f"Bearer {app_jwt(app_key)}"}
    token = (await http.post("/app/installations/11/access_tokens", headers=jwt)).json()["token"]
    response = await http.post(
        "/repos/acme/app/actions/runners/generate-jitconfig",
        json={"name": name, "runner_group_id": 1, "labels": ["self-hosted", "linux", "gantryd"]},
        headers={"Authorization": f"token {token}"},
    )
    assert response.status_code == 201, response.text
    encoded: str = response.json()["encoded_jit_config"]
    return encoded
