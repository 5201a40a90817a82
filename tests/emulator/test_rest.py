"""GitHub's REST endpoints over HTTP (agent/emulator/rest.py), status codes and bodies."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, Faults
from agent.emulator.models import RunnerScope

from .conftest import Clock, app_jwt

JIT = "/repos/acme/app/actions/runners/generate-jitconfig"
BODY = {"name": "r1", "runner_group_id": 1, "labels": ["self-hosted", "linux", "gantryd"]}


def auth(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


async def test_access_token_from_jwt(
    http: httpx.AsyncClient, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    response = await http.post(
        "/app/installations/11/access_tokens", headers=auth(app_jwt(app_key, clock.now))
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("ghs_")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    assert body["permissions"]["administration"] == "write"
    assert body["repository_selection"] == "selected"


async def test_bad_jwt_is_401_with_githubs_shape(http: httpx.AsyncClient) -> None:
    response = await http.post("/app/installations/11/access_tokens", headers=auth("a.b.c"))
    assert response.status_code == 401
    assert response.json() == {
        "message": "A JSON web token could not be decoded",
        "documentation_url": "https://docs.github.com/rest",
        "status": "401",
    }
    response = await http.post("/app/installations/11/access_tokens")
    assert response.status_code == 401


async def test_installation_lookup(
    http: httpx.AsyncClient, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    # The JWT is made on the emulator's (frozen) clock: GitHub checks exp against its own now.
    headers = auth(app_jwt(app_key, clock.now))
    assert (await http.get("/repos/acme/lib/installation", headers=headers)).json()["id"] == 11
    assert (await http.get("/orgs/other/installation", headers=headers)).json()["id"] == 12
    assert (await http.get("/repos/acme/nope/installation", headers=headers)).status_code == 404


async def test_jitconfig_created(
    http: httpx.AsyncClient, token_for: Callable[[int], str], base_url: str
) -> None:
    response = await http.post(JIT, json=BODY, headers=auth(token_for(11), "token"))
    assert response.status_code == 201
    body = response.json()
    runner = body["runner"]
    assert (runner["name"], runner["os"], runner["status"], runner["busy"]) == (
        "r1",
        "unknown",
        "offline",
        False,
    )
    assert runner["runner_group_id"] == 1
    assert [(label["name"], label["type"]) for label in runner["labels"]] == [
        ("self-hosted", "read-only"),
        ("linux", "read-only"),
        ("gantryd", "custom"),
    ]
    files = json.loads(base64.b64decode(body["encoded_jit_config"]))
    assert set(files) == {".runner", ".credentials", ".credentials_rsaparams"}
    dot_runner = json.loads(base64.b64decode(files[".runner"]))
    assert dot_runner["agentId"] == runner["id"]
    assert dot_runner["agentName"] == "r1"
    assert dot_runner["serverUrl"] == f"{base_url}/_runner"
    assert dot_runner["workFolder"] == "_work"
    credentials = json.loads(base64.b64decode(files[".credentials"]))
    assert credentials["scheme"] == "OAuth" and credentials["data"]["token"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"runner_group_id": 1, "labels": ["x"]}, '"name" wasn\'t supplied.'),
        ({"name": "r", "labels": ["x"]}, '"runner_group_id" wasn\'t supplied.'),
        ({"name": "r", "runner_group_id": 1}, '"labels" wasn\'t supplied.'),
        ({"name": "r", "runner_group_id": "1", "labels": ["x"]}, "is not an integer"),
        ({"name": "r", "runner_group_id": 1, "labels": []}, "fewer items than the minimum of 1"),
        (
            {"name": "r", "runner_group_id": 1, "labels": [f"l{i}" for i in range(101)]},
            "more items than the maximum of 100",
        ),
        ({"name": "r", "runner_group_id": 1, "labels": "x"}, "is not an array"),
        ({"name": "r", "runner_group_id": 1, "labels": [1]}, "is not a string"),
        ([], "is not an object"),
    ],
)
async def test_jitconfig_validation_is_422(
    http: httpx.AsyncClient, token_for: Callable[[int], str], body: Any, message: str
) -> None:
    response = await http.post(JIT, json=body, headers=auth(token_for(11)))
    assert response.status_code == 422
    assert response.json()["message"].startswith("Invalid request.\n\n")
    assert message in response.json()["message"]


async def test_runner_name_over_64_characters_is_422(
    http: httpx.AsyncClient, token_for: Callable[[int], str]
) -> None:
    headers = auth(token_for(11))
    response = await http.post(JIT, json={**BODY, "name": "n" * 65}, headers=headers)
    assert response.status_code == 422
    assert response.json()["message"] == "Validation Failed"
    assert response.json()["errors"] == [
        {
            "resource": "Runner",
            "code": "custom",
            "field": "name",
            "message": "name is too long (maximum is 64 characters)",
        }
    ]
    assert (
        await http.post(JIT, json={**BODY, "name": "n" * 64}, headers=headers)
    ).status_code == 201


async def test_jitconfig_bad_json_is_400(
    http: httpx.AsyncClient, token_for: Callable[[int], str]
) -> None:
    response = await http.post(JIT, content=b"{nope", headers=auth(token_for(11)))
    assert (response.status_code, response.json()["message"]) == (400, "Problems parsing JSON")


async def test_jitconfig_duplicate_is_409(
    http: httpx.AsyncClient, token_for: Callable[[int], str]
) -> None:
    headers = auth(token_for(11))
    assert (await http.post(JIT, json=BODY, headers=headers)).status_code == 201
    response = await http.post(JIT, json=BODY, headers=headers)
    assert response.status_code == 409
    assert (
        response.json()["message"] == "Already exists - A runner with the name r1 already exists."
    )


async def test_token_checks(
    http: httpx.AsyncClient, token_for: Callable[[int], str], emulator: Emulator, clock: Clock
) -> None:
    assert (await http.post(JIT, json=BODY, headers=auth("ghs_unknown"))).status_code == 401
    other = auth(token_for(12))
    assert (await http.post(JIT, json=BODY, headers=other)).status_code == 404
    org_jit = "/orgs/acme/actions/runners/generate-jitconfig"
    assert (await http.post(org_jit, json=BODY, headers=other)).status_code == 403
    headers = auth(token_for(11))
    clock.now += emulator.token_lifetime
    response = await http.post(JIT, json=BODY, headers=headers)
    assert (response.status_code, response.json()["message"]) == (401, "Bad credentials")


async def test_list_get_delete(http: httpx.AsyncClient, token_for: Callable[[int], str]) -> None:
    headers = auth(token_for(11))
    ids = []
    for i in range(3):
        body = {**BODY, "name": f"r{i}"}
        ids.append((await http.post(JIT, json=body, headers=headers)).json()["runner"]["id"])
    base = "/repos/acme/app/actions/runners"
    listed = await http.get(base, params={"per_page": 2}, headers=headers)
    assert listed.json()["total_count"] == 3
    assert [r["name"] for r in listed.json()["runners"]] == ["r0", "r1"]
    assert 'rel="next"' in listed.headers["link"]
    page2 = await http.get(base, params={"per_page": 2, "page": 2}, headers=headers)
    assert [r["name"] for r in page2.json()["runners"]] == ["r2"]
    named = await http.get(base, params={"name": "r1"}, headers=headers)
    assert [r["id"] for r in named.json()["runners"]] == [ids[1]]
    assert (await http.get(f"{base}/{ids[0]}", headers=headers)).json()["name"] == "r0"
    assert (await http.delete(f"{base}/{ids[0]}", headers=headers)).status_code == 204
    assert (await http.get(f"{base}/{ids[0]}", headers=headers)).status_code == 404
    assert (await http.delete(f"{base}/{ids[0]}", headers=headers)).status_code == 404
    # The runner belongs to acme/app: not visible under the organization.
    org = await http.get(f"/orgs/acme/actions/runners/{ids[1]}", headers=headers)
    assert org.status_code == 404


async def test_delete_busy_runner_is_422(
    http: httpx.AsyncClient, token_for: Callable[[int], str], emulator: Emulator
) -> None:
    headers = auth(token_for(11))
    created = (await http.post(JIT, json=BODY, headers=headers)).json()
    runner_id = created["runner"]["id"]
    secret = emulator.runner(RunnerScope(repository="acme/app"), runner_id).secret
    emulator.open_session(secret)
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    response = await http.delete(f"/repos/acme/app/actions/runners/{runner_id}", headers=headers)
    assert response.status_code == 422
    assert response.json()["message"] == 'Bad request - Runner "r1" is still running a job"'
    got = await http.get(f"/repos/acme/app/actions/runners/{runner_id}", headers=headers)
    assert (got.json()["status"], got.json()["busy"], got.json()["os"]) == ("online", True, "Linux")
    job_view = await http.get(f"/repos/acme/app/actions/jobs/{job.id}", headers=headers)
    assert job_view.json()["status"] == "in_progress"
    assert job_view.json()["runner_id"] == runner_id
    assert (
        await http.get(f"/repos/acme/lib/actions/jobs/{job.id}", headers=headers)
    ).status_code == 404


async def test_org_runner_groups(
    http: httpx.AsyncClient, token_for: Callable[[int], str], emulator: Emulator
) -> None:
    emulator.add_runner_group("acme", "gantryd")
    response = await http.get("/orgs/acme/actions/runner-groups", headers=auth(token_for(11)))
    groups = response.json()["runner_groups"]
    assert [(g["id"], g["name"], g["default"]) for g in groups] == [
        (1, "Default", True),
        (2, "gantryd", False),
    ]


async def test_server_error_fault(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    emulator.faults = Faults(server_error_rate=1.0)
    response = await http.get("/repos/acme/app/actions/runners", headers=auth(token_for(11)))
    assert response.status_code == 502


async def test_unknown_route_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/nowhere")
    assert (response.status_code, response.json()["message"]) == (404, "Not Found")
