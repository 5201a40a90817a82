"""agent/emulator/repos.py: repository listings as GitHub pages them, reached as GitHub allows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, serve_emulator

from .conftest import APP_ID, Clock, app_jwt

MANY = [f"bulk/repo-{i:03d}" for i in range(130)]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def emulator(app_key: rsa.RSAPrivateKey, clock: Clock) -> Emulator:
    return Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations={11: ["acme/app", "acme/lib"], 12: MANY},
        clock=clock,
        seed=1,
    )


@pytest.fixture
async def http(emulator: Emulator, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    base_url = await nursery.start(serve_emulator, emulator)
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def token(emulator: Emulator, app_key: rsa.RSAPrivateKey, clock: Clock) -> Callable[..., str]:
    """An installation token, optionally narrowed (``repositories=[...]``); the JWT is made at
    the emulator's clock, as its expiry check reads that clock."""

    def issue(installation_id: int, **body: object) -> str:
        jwt = app_jwt(app_key, clock.now)
        return emulator.issue_token(jwt, installation_id, body or None).token

    return issue


async def test_installation_repositories_are_paged_with_total_count(
    token: Callable[..., str], http: httpx.AsyncClient
) -> None:
    headers = auth(token(12))
    first = await http.get("/installation/repositories", params={"per_page": 100}, headers=headers)
    assert first.status_code == 200
    body = first.json()
    assert body["total_count"] == 130 and body["repository_selection"] == "selected"
    assert len(body["repositories"]) == 100
    assert body["repositories"][0]["full_name"] == "bulk/repo-000"
    assert {"id", "name", "full_name", "private", "owner"} <= body["repositories"][0].keys()
    following = first.links["next"]["url"]
    assert "page=2" in following and "last" in first.links
    second = await http.get(following, headers=headers)
    names = [r["full_name"] for r in second.json()["repositories"]]
    assert names == MANY[100:] and "next" not in second.links
    default = await http.get("/installation/repositories", headers=headers)
    assert len(default.json()["repositories"]) == 30  # GitHub's default page size


async def test_installation_repositories_need_an_installation_token(
    emulator: Emulator,
    app_key: rsa.RSAPrivateKey,
    clock: Clock,
    token: Callable[..., str],
    http: httpx.AsyncClient,
) -> None:
    narrowed = token(11, repositories=["lib"])
    listed = await http.get("/installation/repositories", headers=auth(narrowed))
    assert [r["full_name"] for r in listed.json()["repositories"]] == ["acme/lib"]
    personal = emulator.add_personal_token(11)
    refused = await http.get("/installation/repositories", headers=auth(personal))
    assert refused.status_code == 403 and "installation access token" in refused.json()["message"]
    assert (await http.get("/installation/repositories", headers=auth("ghs_x"))).status_code == 401
    jwt = await http.get("/installation/repositories", headers=auth(app_jwt(app_key, clock.now)))
    assert jwt.status_code == 401


async def test_org_repositories_list_what_the_token_sees(
    emulator: Emulator, token: Callable[..., str], http: httpx.AsyncClient
) -> None:
    personal = auth(emulator.add_personal_token(11))
    listed = await http.get("/orgs/acme/repos", headers=personal)
    assert listed.status_code == 200
    assert [r["full_name"] for r in listed.json()] == ["acme/lib", "acme/app"]  # newest first
    by_name = await http.get("/orgs/acme/repos", params={"sort": "full_name"}, headers=personal)
    assert [r["full_name"] for r in by_name.json()] == ["acme/app", "acme/lib"]
    forks = await http.get("/orgs/acme/repos", params={"type": "forks"}, headers=personal)
    assert forks.json() == []
    bad = await http.get("/orgs/acme/repos", params={"type": "mine"}, headers=personal)
    assert bad.status_code == 422
    other = auth(token(12))  # another account's installation: acme's repositories are private
    assert (await http.get("/orgs/acme/repos", headers=other)).json() == []
    assert (await http.get("/orgs/nobody/repos", headers=personal)).status_code == 404
    bulk = auth(token(12))
    paged = await http.get("/orgs/bulk/repos", params={"per_page": 50, "page": 3}, headers=bulk)
    assert len(paged.json()) == 30 and "prev" in paged.links and "next" not in paged.links
