"""GitHub removing JIT runners that never took a job (agent/emulator/state.py `reap`).

What the real runner sees: polling when it is removed, RunnerNotFound ("The runner no longer
exists on the server", actions/runner#4726); connecting afterwards, ``invalid_client`` ("The
runner registration has been deleted from the server", src/Runner.Listener/MessageListener.cs).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator
from agent.emulator.models import RunnerScope
from agent.emulator.state import DEFAULT_RUNNER_IDLE_TIMEOUT

from .conftest import APP_ID, INSTALLATIONS, Clock

REPO = RunnerScope(repository="acme/app")
RUNNERS = "/repos/acme/app/actions/runners"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(http: httpx.AsyncClient, token: str, name: str = "r") -> tuple[int, str, str]:
    """A JIT runner via REST: (runner id, serverUrl, secret)."""
    response = await http.post(
        f"{RUNNERS}/generate-jitconfig",
        json={"name": name, "runner_group_id": 1, "labels": ["self-hosted", "gantryd"]},
        headers=auth(token),
    )
    assert response.status_code == 201
    files = json.loads(base64.b64decode(response.json()["encoded_jit_config"]))
    server = json.loads(base64.b64decode(files[".runner"]))["serverUrl"]
    secret = json.loads(base64.b64decode(files[".credentials"]))["data"]["token"]
    return response.json()["runner"]["id"], server, secret


async def test_idle_runner_disappears_after_five_minutes(
    http: httpx.AsyncClient, token_for: Callable[[int], str], clock: Clock
) -> None:
    token = token_for(11)
    runner_id, server, secret = await register(http, token)
    clock.now += DEFAULT_RUNNER_IDLE_TIMEOUT - 1
    assert (await http.get(f"{RUNNERS}/{runner_id}", headers=auth(token))).status_code == 200
    clock.now += 1
    gone = await http.get(f"{RUNNERS}/{runner_id}", headers=auth(token))
    assert gone.status_code == 404
    listed = await http.get(RUNNERS, headers=auth(token))
    assert listed.json() == {"total_count": 0, "runners": []}
    # A runner process started now with that JIT config is refused as GitHub refuses it.
    late = await http.post(f"{server}/sessions", json={"os": "Linux"}, headers=auth(secret))
    assert late.status_code == 401
    assert late.json()["error"] == "invalid_client"


async def test_connecting_does_not_restart_the_idle_clock(
    http: httpx.AsyncClient, token_for: Callable[[int], str], clock: Clock
) -> None:
    token = token_for(11)
    runner_id, server, secret = await register(http, token)
    clock.now += 200
    opened = await http.post(f"{server}/sessions", json={"os": "Linux"}, headers=auth(secret))
    assert opened.status_code == 201
    clock.now += 100
    assert (await http.get(f"{RUNNERS}/{runner_id}", headers=auth(token))).status_code == 404


async def test_polling_runner_is_told_it_no_longer_exists(
    http: httpx.AsyncClient, token_for: Callable[[int], str], clock: Clock, emulator: Emulator
) -> None:
    _, server, secret = await register(http, token_for(11))
    (runner,) = emulator.runners(REPO)
    opened = await http.post(f"{server}/sessions", json={"os": "Linux"}, headers=auth(secret))
    session = opened.json()["sessionId"]
    answer: list[httpx.Response] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                url = f"{server}/sessions/{session}/message"
                answer.append(await http.get(url, headers=auth(secret)))

            nursery.start_soon(poll)
            while runner.session is None or runner.session.polls == 0:  # the poll is waiting
                await trio.testing.wait_all_tasks_blocked(0.01)
            clock.now += DEFAULT_RUNNER_IDLE_TIMEOUT  # nobody calls: the emulator's own pass acts
    (response,) = answer
    assert response.status_code == 404
    assert response.json() == {
        "source": "actions-broker-listener",
        "errorKind": "RunnerNotFound",
        "statusCode": 404,
        "errorMessage": "Runner not found",
    }


async def test_busy_runner_stays(emulator: Emulator, clock: Clock) -> None:
    runner, _ = emulator.generate_jitconfig(
        REPO, {"name": "busy", "runner_group_id": 1, "labels": ["gantryd"]}
    )
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    emulator.open_session(runner.secret)
    assert runner.job_id == job.id
    clock.now += DEFAULT_RUNNER_IDLE_TIMEOUT * 10
    assert emulator.runners(REPO) == [runner]
    emulator.report_result(runner.secret, job.id, 0, b"")
    assert emulator.runners(REPO) == []


def test_idle_timeout_is_configurable(app_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    emulator = Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations=INSTALLATIONS,
        clock=clock,
        runner_idle_timeout=60,
    )
    runner, _ = emulator.generate_jitconfig(
        REPO, {"name": "r", "runner_group_id": 1, "labels": ["gantryd"]}
    )
    clock.now += 59
    assert emulator.runners(REPO) == [runner]
    clock.now += 1
    assert emulator.runners(REPO) == []
