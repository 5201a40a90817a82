"""The stand-in runner's protocol over HTTP (agent/emulator/broker.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest
import trio

from agent.emulator import Conclusion, Emulator, JobStatus, broker
from agent.emulator.models import parse_runner_version


async def jit_runner(http: httpx.AsyncClient, token: str, name: str = "r") -> tuple[str, str]:
    """Register a runner via REST; return (serverUrl, runner secret) from its JIT config."""
    response = await http.post(
        "/repos/acme/app/actions/runners/generate-jitconfig",
        json={"name": name, "runner_group_id": 1, "labels": ["self-hosted", "gantryd"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    files = json.loads(base64.b64decode(response.json()["encoded_jit_config"]))
    server = json.loads(base64.b64decode(files[".runner"]))["serverUrl"]
    secret = json.loads(base64.b64decode(files[".credentials"]))["data"]["token"]
    return server, secret


async def test_one_job_through_the_broker(
    http: httpx.AsyncClient, token_for: Callable[[int], str], emulator: Emulator
) -> None:
    server, secret = await jit_runner(http, token_for(11))
    headers = {"Authorization": f"Bearer {secret}"}
    opened = await http.post(f"{server}/sessions", json={"os": "Linux"}, headers=headers)
    assert opened.status_code == 201
    session = opened.json()["sessionId"]
    conflict = await http.post(f"{server}/sessions", headers=headers)
    assert conflict.status_code == 409
    job = emulator.create_job("acme/app", ["gantryd"], "echo hi\n")
    message = await http.get(f"{server}/sessions/{session}/message", headers=headers)
    assert message.status_code == 200
    assert message.json()["job_id"] == job.id
    assert base64.b64decode(message.json()["script"]) == b"echo hi\n"
    done = await http.post(
        f"{server}/jobs/{job.id}/result", params={"exit_code": 0}, content=b"hi\n", headers=headers
    )
    assert done.status_code == 204
    assert (job.status, job.conclusion, job.log) == (
        JobStatus.COMPLETED,
        Conclusion.SUCCESS,
        b"hi\n",
    )
    # The JIT runner is gone after its job: its credentials no longer work.
    again = await http.post(f"{server}/sessions", headers=headers)
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"


async def test_idle_poll_answers_204(
    http: httpx.AsyncClient,
    token_for: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker, "POLL_SECONDS", 0.2)
    server, secret = await jit_runner(http, token_for(11))
    headers = {"Authorization": f"Bearer {secret}"}
    session = (await http.post(f"{server}/sessions", headers=headers)).json()["sessionId"]
    with trio.fail_after(10):
        message = await http.get(f"{server}/sessions/{session}/message", headers=headers)
    assert (message.status_code, message.content) == (204, b"")


async def test_bad_credentials(http: httpx.AsyncClient, base_url: str) -> None:
    response = await http.post("/_runner/sessions", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


async def test_version_floor_is_off_unless_set(
    http: httpx.AsyncClient, token_for: Callable[[int], str], emulator: Emulator
) -> None:
    server, secret = await jit_runner(http, token_for(11))
    headers = {"Authorization": f"Bearer {secret}"}
    session = (await http.post(f"{server}/sessions", headers=headers)).json()["sessionId"]
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    message = await http.get(f"{server}/sessions/{session}/message", headers=headers)
    assert message.json()["job_id"] == job.id  # no runnerVersion, no floor: served


@pytest.mark.parametrize("version", ["2.316.1", None, "latest"])
async def test_runner_below_the_floor_is_refused_as_deprecated(
    http: httpx.AsyncClient,
    token_for: Callable[[int], str],
    emulator: Emulator,
    version: str | None,
) -> None:
    emulator.min_runner_version = parse_runner_version("2.329.0")
    server, secret = await jit_runner(http, token_for(11))
    headers = {"Authorization": f"Bearer {secret}"}
    session = (await http.post(f"{server}/sessions", headers=headers)).json()["sessionId"]
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    # Online, idle, labels fit: still no job before its version is known to be new enough.
    assert (job.status, job.runner_id) == (JobStatus.QUEUED, None)
    params = {"runnerVersion": version} if version is not None else {}
    refused = await http.get(f"{server}/sessions/{session}/message", params=params, headers=headers)
    assert refused.status_code == 403
    assert (job.status, job.runner_id) == (JobStatus.QUEUED, None)  # refused before assigned
    assert refused.json() == {
        "source": "actions-broker-listener",
        "errorKind": "RunnerVersionTooOld",
        "statusCode": 403,
        "errorMessage": f"Runner version v{version or ''} is deprecated and cannot receive "
        "messages.",
    }
    served = await http.get(
        f"{server}/sessions/{session}/message",
        params={"runnerVersion": "2.329.0"},
        headers=headers,
    )
    assert served.status_code == 200


async def test_closed_session_is_invalid(
    http: httpx.AsyncClient, token_for: Callable[[int], str]
) -> None:
    server, secret = await jit_runner(http, token_for(11))
    headers = {"Authorization": f"Bearer {secret}"}
    session = (await http.post(f"{server}/sessions", headers=headers)).json()["sessionId"]
    await http.post(f"{server}/sessions/{session}/close", headers=headers)
    gone = await http.get(f"{server}/sessions/{session}/message", headers=headers)
    assert (gone.status_code, gone.json()["errorKind"]) == (404, "RunnerSessionInvalid")


@pytest.mark.parametrize(("version", "assigned"), [("2.316.1", False), ("2.329.0", True)])
async def test_the_session_version_decides_before_any_job_is_assigned(
    http: httpx.AsyncClient,
    token_for: Callable[[int], str],
    emulator: Emulator,
    version: str,
    assigned: bool,
) -> None:
    """The real runner names its version when it opens its session (``agent.version``); a
    runner below the floor is never given the job that is waiting, one at the floor at once."""
    emulator.min_runner_version = parse_runner_version("2.329.0")
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    server, secret = await jit_runner(http, token_for(11))
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"os": "Linux", "agent": {"name": "r", "version": version}}
    opened = await http.post(f"{server}/sessions", json=body, headers=headers)
    assert opened.status_code == 201
    assert (job.status is JobStatus.IN_PROGRESS) is assigned
    session = opened.json()["sessionId"]
    params = {"runnerVersion": version}
    answer = await http.get(f"{server}/sessions/{session}/message", params=params, headers=headers)
    assert answer.status_code == (200 if assigned else 403)
    assert (job.runner_id is not None) is assigned
