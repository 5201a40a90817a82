"""The Actions service behind runner scale sets (agent/emulator/scalesets.py, actions_service.py),
spoken to over real HTTP as a listener would, byte for byte where it matters (BOMs, headers)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Conclusion, Emulator, JobStatus
from agent.emulator.models import RunnerScope
from agent.emulator.scaleset_models import BOM, MAX_BATCH, MAX_REQUEUES
from tests.emulator_clock import Clock

from .conftest import app_jwt

API = {"api-version": "6.0-preview"}
SCALE_SETS = "_apis/runtime/runnerscalesets"


def decode(response: httpx.Response) -> Any:
    """The JSON of an answer, which must start with the BOM the service sends."""
    assert response.content.startswith(BOM), response.content[:20]
    return json.loads(response.content[len(BOM) :])


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


@dataclass
class Admin:
    """An admin connection to the Actions service, as runner-registration hands it out."""

    http: httpx.AsyncClient
    url: str  # the Actions base, ending in "/"
    token: str

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        params = {**API, **kw.pop("params", {})}
        return await self.http.request(
            method, self.url + path, headers=headers, params=params, **kw
        )

    async def scale_set(self, name: str = "gantry", **extra: Any) -> dict[str, Any]:
        body = {"name": name, "runnerGroupId": 1, "labels": [{"name": name, "type": "System"}]}
        response = await self.call("POST", SCALE_SETS, json={**body, **extra})
        assert response.status_code == 200, response.text
        created: dict[str, Any] = decode(response)
        return created

    async def session(self, scale_set_id: int, owner: str = "host-1") -> Session:
        response = await self.call(
            "POST", f"{SCALE_SETS}/{scale_set_id}/sessions", json={"ownerName": owner}
        )
        assert response.status_code == 200, response.text
        return Session(self, scale_set_id, decode(response))


@dataclass
class Session:
    admin: Admin
    scale_set_id: int
    body: dict[str, Any]

    @property
    def token(self) -> str:
        token: str = self.body["messageQueueAccessToken"]
        return token

    async def poll(
        self, last: int = 0, capacity: int | None = 10, token: str | None = None
    ) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {token or self.token}",
            "Accept": "application/json; api-version=6.0-preview",
        }
        if capacity is not None:
            headers["X-ScaleSetMaxCapacity"] = str(capacity)
        params = {"lastMessageId": last} if last else {}
        with trio.fail_after(10):
            return await self.admin.http.get(
                self.body["messageQueueUrl"], headers=headers, params=params
            )

    async def message(self, last: int = 0, capacity: int | None = 10) -> tuple[int, list[Any]]:
        """The next message: its id and the decoded batch in its ``body`` string."""
        response = await self.poll(last, capacity)
        assert response.status_code == 200, response.text
        body = decode(response)
        assert body["messageType"] == "RunnerScaleSetJobMessages"
        assert isinstance(body["body"], str)
        return body["messageId"], json.loads(body["body"])

    async def ack(self, message_id: int) -> None:
        response = await self.admin.http.delete(
            f"{self.body['messageQueueUrl']}/{message_id}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == 204

    async def acquire(self, ids: list[int], token: str | None = None) -> httpx.Response:
        return await self.admin.http.post(
            f"{self.admin.url}{SCALE_SETS}/{self.scale_set_id}/acquirejobs",
            params=API,
            json=ids,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )


@pytest.fixture
def quick(emulator: Emulator) -> Emulator:
    """Short waits so 202s and withdrawals happen within a test."""
    emulator.actions.settings.poll_timeout = 0.3
    return emulator


async def installation_token(http: httpx.AsyncClient, key: rsa.RSAPrivateKey, now: float) -> str:
    response = await http.post(
        "/app/installations/11/access_tokens",
        headers={"Authorization": f"Bearer {app_jwt(key, now)}"},
    )
    token: str = response.json()["token"]
    return token


async def registration_token(http: httpx.AsyncClient, token: str, target: str) -> httpx.Response:
    path = f"/orgs/{target}" if "/" not in target else f"/repos/{target}"
    return await http.post(
        f"{path}/actions/runners/registration-token",
        headers={"Authorization": f"Bearer {token}"},
    )


async def register(
    http: httpx.AsyncClient, base_url: str, registration: str, target: str
) -> httpx.Response:
    return await http.post(
        "/actions/runner-registration",
        json={"url": f"{base_url}/{target}", "runner_event": "register"},
        headers={"Authorization": f"RemoteAuth {registration}"},
    )


@pytest.fixture
async def admin_for(
    http: httpx.AsyncClient, base_url: str, app_key: rsa.RSAPrivateKey, clock: Clock
) -> Any:
    async def connect(target: str = "acme") -> Admin:
        token = await installation_token(http, app_key, clock.now)
        registration = (await registration_token(http, token, target)).json()["token"]
        body = decode(await register(http, base_url, registration, target))
        return Admin(http, body["url"], body["token"])

    return connect


@pytest.fixture
async def admin(admin_for: Any) -> Admin:
    connected: Admin = await admin_for()
    return connected


def runner_credentials(encoded: str) -> tuple[str, str]:
    """serverUrl and the runner secret from a JIT config (the stand-in runner's reading)."""
    files = json.loads(base64.b64decode(encoded))
    runner = json.loads(base64.b64decode(files[".runner"]))
    secret = json.loads(base64.b64decode(files[".credentials"]))["data"]["token"]
    return runner["serverUrl"], secret


async def scale_set_runner(admin: Admin, scale_set_id: int, name: str) -> tuple[str, str, int]:
    response = await admin.call(
        "POST",
        f"{SCALE_SETS}/{scale_set_id}/generatejitconfig",
        json={"name": name, "workFolder": "_work"},
    )
    assert response.status_code == 200, response.text
    body = decode(response)
    assert body["runner"]["runnerScaleSetId"] == scale_set_id
    server, secret = runner_credentials(body["encodedJITConfig"])
    return server, secret, body["runner"]["id"]


# ---------------------------------------------------------------- registration


async def test_registration_chain_hands_out_base_and_expiring_admin_jwt(
    http: httpx.AsyncClient, base_url: str, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    token = await installation_token(http, app_key, clock.now)
    issued = await registration_token(http, token, "acme")
    assert issued.status_code == 201
    assert issued.json()["expires_at"].endswith("Z")
    registration = issued.json()["token"]

    bearer = await http.post(
        "/actions/runner-registration",
        json={"url": f"{base_url}/acme", "runner_event": "register"},
        headers={"Authorization": f"Bearer {registration}"},
    )
    assert bearer.status_code == 401  # only RemoteAuth carries a registration token
    wrong_url = await register(http, base_url, registration, "other")
    assert wrong_url.status_code == 404
    answer = await register(http, base_url, registration, "acme")
    assert answer.status_code == 201
    body = decode(answer)
    assert body["url"] == f"{base_url}/_actions/rest/"
    claims = jwt_claims(body["token"])
    assert clock.now < claims["exp"] <= clock.now + 3600 + 1

    clock.offset += 3601  # registration tokens last an hour
    assert (await register(http, base_url, registration, "acme")).status_code == 401


async def test_registration_token_needs_the_runner_permission(
    http: httpx.AsyncClient, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    token = await installation_token(http, app_key, clock.now)
    assert (await registration_token(http, token, "other")).status_code == 403
    assert (await registration_token(http, token, "acme/app")).status_code == 201
    assert (await registration_token(http, "ghs_nope", "acme")).status_code == 401


async def test_admin_token_expires_and_answers_carry_trace_ids(
    admin: Admin, clock: Clock, emulator: Emulator
) -> None:
    listed = await admin.call("GET", SCALE_SETS)
    assert listed.status_code == 200
    assert decode(listed) == {"count": 0, "value": []}
    assert listed.headers["activityid"] and listed.headers["x-github-request-id"]
    unversioned = await admin.http.get(
        admin.url + SCALE_SETS, headers={"Authorization": f"Bearer {admin.token}"}
    )
    assert unversioned.status_code == 400
    clock.offset += emulator.actions.settings.admin_token_lifetime + 1
    expired = await admin.call("GET", SCALE_SETS)
    assert expired.status_code == 401
    assert expired.headers["activityid"]


# ---------------------------------------------------------------- groups and scale sets


async def test_runner_groups_by_name_case_insensitively(admin: Admin, emulator: Emulator) -> None:
    emulator.add_runner_group("acme", "Builders")
    for path in ("_apis/runtime/runnergroups/", "_apis/runtime/runnergroups"):
        found = decode(await admin.call("GET", path, params={"groupName": "default"}))
        assert found["count"] == 1
        assert found["value"][0] | {"size": 0} == {
            "id": 1,
            "name": "Default",
            "size": 0,
            "isDefaultGroup": True,
        }
    builders = decode(
        await admin.call("GET", "_apis/runtime/runnergroups/", params={"groupName": "builders"})
    )
    assert [g["name"] for g in builders["value"]] == ["Builders"]
    none = decode(await admin.call("GET", "_apis/runtime/runnergroups/", params={"groupName": "x"}))
    assert none == {"count": 0, "value": []}


async def test_scale_set_crud(admin: Admin, admin_for: Any, emulator: Emulator) -> None:
    created = await admin.scale_set("gantry", RunnerSetting={"disableUpdate": True})
    assert created["runnerGroupName"] == "Default"
    assert created["labels"] == [{"type": "System", "name": "gantry"}]
    assert created["RunnerSetting"] == {"disableUpdate": True}
    assert created["runnerJitConfigUrl"].endswith(f"{created['id']}/generatejitconfig")
    assert created["statistics"]["totalAssignedJobs"] == 0

    duplicate = await admin.call(
        "POST", SCALE_SETS, json={"name": "GANTRY", "runnerGroupId": 1, "labels": []}
    )
    assert duplicate.status_code == 400
    assert "RunnerScaleSetExistsException" in duplicate.json()["typeName"]
    no_group = await admin.call("POST", SCALE_SETS, json={"name": "x", "runnerGroupId": 99})
    assert no_group.status_code == 404

    by_name = decode(
        await admin.call("GET", SCALE_SETS, params={"runnerGroupId": 1, "name": "gantry"})
    )
    assert [s["id"] for s in by_name["value"]] == [created["id"]]
    patched = await admin.call(
        "PATCH",
        f"{SCALE_SETS}/{created['id']}",
        json={"labels": [{"name": "gantry", "type": "System"}, {"name": "big", "type": "System"}]},
    )
    assert [label["name"] for label in decode(patched)["labels"]] == ["gantry", "big"]

    elsewhere = await admin_for("acme/app")  # a repository's admin token: another scope
    hidden = await elsewhere.call("GET", f"{SCALE_SETS}/{created['id']}")
    assert hidden.status_code == 404
    assert "RunnerScaleSetNotFoundException" in hidden.json()["typeName"]

    assert (await admin.call("DELETE", f"{SCALE_SETS}/{created['id']}")).status_code == 204
    assert (await admin.call("GET", f"{SCALE_SETS}/{created['id']}")).status_code == 404


# ---------------------------------------------------------------- sessions


async def test_one_session_per_scale_set(
    admin: Admin, clock: Clock, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    first = await admin.session(scale_set["id"], "host-1")
    assert first.body["ownerName"] == "host-1"
    assert first.body["runnerScaleSet"]["id"] == scale_set["id"]
    assert jwt_claims(first.token)["exp"] > clock.now

    conflict = await admin.call(
        "POST", f"{SCALE_SETS}/{scale_set['id']}/sessions", json={"ownerName": "host-2"}
    )
    assert conflict.status_code == 409
    error = conflict.json()
    assert error["typeName"] == (
        "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, "
        "GitHub.Actions.Runtime.WebApi"
    )
    assert error["message"] == (
        "The runner scale set gantry already has an active session for owner host-1."
    )

    # Abandoned (no poll, no refresh) past session_idle: gone; its token, refresh and delete fail.
    clock.offset += emulator.actions.settings.session_idle + 1
    second = await admin.session(scale_set["id"], "host-2")
    assert (await first.poll()).status_code == 401
    path = f"{SCALE_SETS}/{scale_set['id']}/sessions/{first.body['sessionId']}"
    refreshed = await admin.call("PATCH", path)
    assert refreshed.status_code == 404
    assert refreshed.json()["typeName"] == "RunnerAdminException"
    deleted = await admin.call("DELETE", path)
    assert deleted.status_code == 400
    assert "RunnerScaleSetSessionExpiredException" in deleted.json()["typeName"]

    # Deleting the live session frees the scale set at once.
    own = f"{SCALE_SETS}/{scale_set['id']}/sessions/{second.body['sessionId']}"
    assert (await admin.call("DELETE", own)).status_code == 204
    await admin.session(scale_set["id"], "host-3")


async def test_a_killed_listeners_session_lapses_or_is_closed_by_its_id(
    admin: Admin, admin_for: Any, clock: Clock, emulator: Emulator
) -> None:
    """What a listener that died (SIGKILL) mid-poll leaves: its poll ends with the connection,
    the session stays refused for ``session_idle`` after that, and another admin connection
    (a restarted process registers anew) may close it by id at once."""
    scale_set = await admin.scale_set()
    first = await admin.session(scale_set["id"], "host-1")
    (held,) = emulator.actions.scale_sets()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.poll)  # held for poll_timeout (50 s) unless the client goes
        with trio.fail_after(10):
            await emulator.actions.wait_until(
                lambda: held.session is not None and held.session.polls == 1
            )
        nursery.cancel_scope.cancel()  # the client dies: its connection closes
    with trio.fail_after(10):
        await emulator.actions.wait_until(
            lambda: held.session is not None and held.session.polls == 0
        )
    sessions = f"{SCALE_SETS}/{scale_set['id']}/sessions"
    refused = await admin.call("POST", sessions, json={"ownerName": "host-1"})
    assert refused.status_code == 409  # not handed over, not even to the same owner
    clock.offset += emulator.actions.settings.session_idle - 1
    assert (await admin.call("POST", sessions, json={"ownerName": "host-1"})).status_code == 409

    restarted: Admin = await admin_for()
    assert restarted.token != admin.token
    closed = await restarted.call("DELETE", f"{sessions}/{first.body['sessionId']}")
    assert closed.status_code == 204
    taken = await restarted.session(scale_set["id"], "host-1")
    assert taken.body["sessionId"] != first.body["sessionId"]


async def test_queue_token_expires_and_refresh_issues_a_new_one(
    admin: Admin, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    assert (await session.poll()).status_code == 202
    emulator.actions.expire_queue_tokens()
    assert (await session.poll()).status_code == 401
    path = f"{SCALE_SETS}/{scale_set['id']}/sessions/{session.body['sessionId']}"
    refreshed = decode(await admin.call("PATCH", path))
    assert refreshed["sessionId"] == session.body["sessionId"]
    assert refreshed["messageQueueAccessToken"] != session.token
    session.body = refreshed
    assert (await session.poll()).status_code == 202


# ---------------------------------------------------------------- the job cycle


async def test_job_cycle_needs_acquire_and_runs_on_the_scale_sets_runner(
    admin: Admin, emulator: Emulator, http: httpx.AsyncClient, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    assert (await session.poll()).status_code == 202  # nothing within the poll timeout

    server, secret, runner_id = await scale_set_runner(admin, scale_set["id"], "gantry-r1")
    auth = {"Authorization": f"Bearer {secret}"}
    opened = await http.post(f"{server}/sessions", json={"os": "Linux"}, headers=auth)
    assert opened.status_code == 201
    broker_session = opened.json()["sessionId"]

    job = emulator.create_job("acme/app", ["gantry"], "echo hi\n")
    message_id, batch = await session.message()
    [available] = batch
    assert available["messageType"] == "JobAvailable"
    assert available["repositoryName"] == "app" and available["ownerName"] == "acme"
    assert available["requestLabels"] == ["gantry"]
    assert isinstance(available["jobId"], str) and available["jobId"]
    assert available["acquireJobUrl"].endswith(f"{scale_set['id']}/acquirejobs")
    request_id = available["runnerRequestId"]
    await session.ack(message_id)
    # Not acquired: the idle runner of the scale set does not get the job.
    assert job.status is JobStatus.QUEUED

    assert (await session.acquire([request_id], token=admin.token)).status_code == 401
    acquired = await session.acquire([request_id, 12345])
    assert decode(acquired) == {"count": 1, "value": [request_id]}
    message_id, batch = await session.message(message_id)
    assert [m["messageType"] for m in batch] == ["JobAssigned", "JobStarted"]
    assert batch[1]["runnerId"] == runner_id and batch[1]["runnerName"] == "gantry-r1"
    assert emulator.job(job.id).status is JobStatus.IN_PROGRESS and job.runner_id == runner_id
    body = decode(await session.poll(0))  # unacked: delivered again, same id
    assert body["messageId"] == message_id
    assert body["statistics"]["totalAssignedJobs"] == 1
    assert body["statistics"]["totalRunningJobs"] == 1
    await session.ack(message_id)

    got = await http.get(f"{server}/sessions/{broker_session}/message", headers=auth)
    assert got.json()["job_id"] == job.id
    done = await http.post(
        f"{server}/jobs/{job.id}/result", params={"exit_code": 0}, content=b"hi\n", headers=auth
    )
    assert done.status_code == 204
    message_id, batch = await session.message(message_id)
    [completed] = batch
    assert completed["messageType"] == "JobCompleted"
    assert (completed["result"], completed["runnerId"]) == ("succeeded", runner_id)
    assert "finishTime" in completed
    await session.ack(message_id)
    assert (await session.poll(message_id)).status_code == 202
    assert job.conclusion is Conclusion.SUCCESS


async def test_webhooks_are_still_sent_for_scale_set_jobs(
    admin: Admin, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    emulator.add_hook("http://127.0.0.1:9/hook", "s")  # nothing listens: recorded as failed
    job = emulator.create_job("acme/app", ["gantry"], "true")
    emulator.cancel_job(job.id)
    with trio.fail_after(10):
        deliveries = await emulator.wait_deliveries(3)
    assert [(d.outgoing.event, d.outgoing.action) for d in deliveries] == [
        ("ping", None),
        ("workflow_job", "queued"),
        ("workflow_job", "completed"),
    ]
    session = await admin.session(scale_set["id"])
    _, batch = await session.message()
    assert [(m["messageType"], m.get("result")) for m in batch] == [
        ("JobAvailable", None),
        ("JobCompleted", "canceled"),
    ]


async def test_capacity_limits_assignment(
    admin: Admin, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    emulator.create_job("acme/app", ["gantry"], "true")
    message_id, [available] = await session.message(capacity=0)
    await session.ack(message_id)
    await session.acquire([available["runnerRequestId"]])
    full = await session.poll(message_id, capacity=0)
    assert full.status_code == 202
    stats = decode(await admin.call("GET", f"{SCALE_SETS}/{scale_set['id']}"))["statistics"]
    assert (stats["totalAcquiredJobs"], stats["totalAssignedJobs"]) == (1, 0)
    _, [assigned] = await session.message(message_id, capacity=1)
    assert assigned["messageType"] == "JobAssigned"


async def test_unacked_messages_are_redelivered_to_the_next_session(
    admin: Admin, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    emulator.create_job("acme/app", ["gantry"], "true")
    first_id, first = await session.message()
    emulator.create_job("acme/lib", ["GANTRY"], "true")  # labels match case-insensitively
    second_id, second = await session.message(first_id)
    assert second_id > first_id
    assert second[0]["repositoryName"] == "lib"
    await session.ack(second_id)
    path = f"{SCALE_SETS}/{scale_set['id']}/sessions/{session.body['sessionId']}"
    assert (await admin.call("DELETE", path)).status_code == 204

    successor = await admin.session(scale_set["id"], "host-1")
    again_id, again = await successor.message()  # from the start: the unacked one only
    assert (again_id, again) == (first_id, first)
    await successor.ack(first_id)
    assert (await successor.poll()).status_code == 202


async def test_batches_hold_at_most_50_job_messages(
    admin: Admin, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    for _ in range(MAX_BATCH + 10):
        emulator.create_job("acme/app", ["gantry"], "true")
    first_id, first = await session.message()
    _, second = await session.message(first_id)
    assert (len(first), len(second)) == (MAX_BATCH, 10)
    stats = decode(await session.poll(0))["statistics"]
    assert stats["totalAvailableJobs"] == MAX_BATCH + 10


async def test_offer_not_acquired_in_time_is_canceled_and_offered_again(
    admin: Admin, emulator: Emulator, clock: Clock, quick: Emulator
) -> None:
    emulator.actions.settings.acquire_timeout = 30.0
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    job = emulator.create_job("acme/app", ["gantry"], "true")
    last, [offer] = await session.message()
    for _ in range(MAX_REQUEUES):
        clock.offset += 31
        last, batch = await session.message(last)
        assert [(m["messageType"], m.get("result")) for m in batch] == [
            ("JobCompleted", "canceled"),
            ("JobAvailable", None),
        ]
        assert batch[0]["runnerRequestId"] == offer["runnerRequestId"]
        assert batch[1]["runnerRequestId"] != offer["runnerRequestId"]
        stale = await session.acquire([offer["runnerRequestId"]])
        assert decode(stale) == {"count": 0, "value": []}
        offer = batch[1]
    clock.offset += 31
    _, [last_word] = await session.message(last)
    assert (last_word["messageType"], last_word["result"]) == ("JobCompleted", "canceled")
    assert job.conclusion is Conclusion.CANCELLED


async def test_routing_keeps_scale_set_and_plain_runners_apart(
    admin: Admin, emulator: Emulator, http: httpx.AsyncClient, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    plain, _ = emulator.generate_jitconfig(
        RunnerScope(repository="acme/app"),
        {"name": "plain", "runner_group_id": 1, "labels": ["gantry", "self-hosted"]},
    )
    emulator.open_session(plain.secret)
    routed = emulator.create_job("acme/app", ["gantry"], "true")
    assert routed.status is JobStatus.QUEUED  # the plain runner has the label but not the job
    _, secret, _ = await scale_set_runner(admin, scale_set["id"], "ss-1")
    emulator.open_session(secret)
    other = emulator.create_job("acme/app", ["self-hosted"], "true")
    assert other.runner_id == plain.id  # not for the scale set: normal dispatch
    _, [available] = await session.message()
    await session.acquire([available["runnerRequestId"]])
    assert emulator.job(routed.id).status is JobStatus.IN_PROGRESS and routed.runner_name == "ss-1"


async def test_runners_of_a_scale_set(admin: Admin, emulator: Emulator, quick: Emulator) -> None:
    scale_set = await admin.scale_set()
    server, secret, runner_id = await scale_set_runner(admin, scale_set["id"], "r1")
    assert server.endswith("/_runner")
    again = await admin.call(
        "POST", f"{SCALE_SETS}/{scale_set['id']}/generatejitconfig", json={"name": "r1"}
    )
    assert again.status_code == 409
    assert "AgentExistsException" in again.json()["typeName"]
    agents = "_apis/distributedtask/pools/0/agents"
    found = decode(await admin.call("GET", f"{agents}/{runner_id}"))
    assert (found["name"], found["runnerScaleSetId"]) == ("r1", scale_set["id"])
    by_name = decode(await admin.call("GET", agents, params={"agentName": "r1"}))
    assert [r["id"] for r in by_name["value"]] == [runner_id]
    stats = decode(await admin.call("GET", f"{SCALE_SETS}/{scale_set['id']}"))["statistics"]
    assert stats["totalRegisteredRunners"] == 1

    session = await admin.session(scale_set["id"])
    emulator.open_session(secret)
    emulator.create_job("acme/app", ["gantry"], "true")
    _, [available] = await session.message()
    await session.acquire([available["runnerRequestId"]])
    busy = await admin.call("DELETE", f"{agents}/{runner_id}")
    assert busy.status_code == 400
    assert "JobStillRunningException" in busy.json()["typeName"]

    _, _, idle_id = await scale_set_runner(admin, scale_set["id"], "r2")
    assert (await admin.call("DELETE", f"{agents}/{idle_id}")).status_code == 204
    gone = await admin.call("GET", f"{agents}/{idle_id}")
    assert gone.status_code == 404
    assert "AgentNotFoundException" in gone.json()["typeName"]


async def test_bodies_without_bom_when_configured(admin: Admin, emulator: Emulator) -> None:
    emulator.actions.settings.bom_bodies = False
    listed = await admin.call("GET", SCALE_SETS)
    assert listed.json() == {"count": 0, "value": []}


async def test_control_api(admin: Admin, http: httpx.AsyncClient, quick: Emulator) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"], "host-9")
    listed = (await http.get("/_emulator/actions/scalesets")).json()
    assert listed[0]["name"] == "gantry" and listed[0]["session"]["owner"] == "host-9"
    expired = await http.post("/_emulator/actions/expire", json={"what": "queue"})
    assert expired.status_code == 204
    assert (await session.poll()).status_code == 401
    assert (await http.post("/_emulator/actions/expire", json={"what": "x"})).status_code == 422


async def test_a_finished_job_frees_its_place_for_the_next(
    admin: Admin, emulator: Emulator, quick: Emulator
) -> None:
    scale_set = await admin.scale_set()
    session = await admin.session(scale_set["id"])
    _, secret, _ = await scale_set_runner(admin, scale_set["id"], "only")
    emulator.open_session(secret)
    first = emulator.create_job("acme/app", ["gantry"], "true")
    emulator.create_job("acme/app", ["gantry"], "true")
    last, offers = await session.message(capacity=1)
    await session.acquire([m["runnerRequestId"] for m in offers])
    last, batch = await session.message(last, capacity=1)
    assert [m["messageType"] for m in batch] == ["JobAssigned", "JobStarted"]
    assert first.status is JobStatus.IN_PROGRESS
    emulator.report_result(secret, first.id, 0, b"")
    _, batch = await session.message(last, capacity=1)
    assert [m["messageType"] for m in batch] == ["JobCompleted", "JobAssigned"]
    assert batch[1]["runnerRequestId"] == offers[1]["runnerRequestId"]
