"""GitHub's edge rules for REST requests (agent/emulator/headers.py)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from agent.emulator.headers import DEFAULT_VERSION, NO_USER_AGENT
from agent.github.transport import API_VERSION, USER_AGENT

RUNNERS = "/repos/acme/app/actions/runners"


async def test_no_user_agent_is_refused_before_anything_else(
    base_url: str, token_for: Callable[[int], str]
) -> None:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False) as client:
        del client.headers["User-Agent"]  # httpx sends python-httpx/<version> otherwise
        authorized = {"Authorization": f"Bearer {token_for(11)}"}
        for headers in (authorized, {**authorized, "User-Agent": ""}, {}):
            response = await client.get(RUNNERS, headers=headers)
            assert response.status_code == 403
            assert response.headers["content-type"] == "text/html"
            assert response.text == NO_USER_AGENT
            assert "x-ratelimit-remaining" not in response.headers  # not even counted
        named = await client.get(RUNNERS, headers={**authorized, "User-Agent": "gantryd"})
        assert named.status_code == 200


async def test_api_version_is_checked_and_defaults_to_2022_11_28(
    http: httpx.AsyncClient, token_for: Callable[[int], str]
) -> None:
    headers = {"Authorization": f"Bearer {token_for(11)}"}
    plain = await http.get(RUNNERS, headers=headers)
    assert plain.status_code == 200
    assert plain.headers["x-github-api-version-selected"] == DEFAULT_VERSION == "2022-11-28"
    chosen = await http.get(RUNNERS, headers={**headers, "X-GitHub-Api-Version": "2022-11-28"})
    assert chosen.headers["x-github-api-version-selected"] == "2022-11-28"
    for version in ("v3", "2021-01-01", "2026-03-10"):
        refused = await http.get(RUNNERS, headers={**headers, "X-GitHub-Api-Version": version})
        assert refused.status_code == 400
        assert refused.json()["message"] == (
            f'The version you specified in the "X-GitHub-API-Version" request header, '
            f'"{version}", is not a supported version. The following versions are currently '
            f'supported: "2022-11-28" (most recent).'
        )


async def test_private_paths_are_not_githubs_api(http: httpx.AsyncClient) -> None:
    response = await http.get("/_emulator/deliveries", headers={"User-Agent": ""})
    assert response.status_code == 200
    broker = await http.post("/_runner/sessions", headers={"User-Agent": ""})
    assert broker.status_code == 401  # the broker's own answer, not the edge's


def test_gantryds_client_sends_what_github_requires() -> None:
    # agent/github/transport.py puts both on every request (its default headers).
    assert USER_AGENT.strip() and API_VERSION == DEFAULT_VERSION
