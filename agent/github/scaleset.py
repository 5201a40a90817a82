"""Client of GitHub's runner scale-set protocol: the Actions service a listener long-polls.

The chain (docs/scale-set.md): an installation token (or the personal token) buys a runner
registration token; ``POST /actions/runner-registration`` with ``RemoteAuth <registration
token>`` answers the Actions service base URL and an admin JWT, which is refreshed 60 s before
its ``exp`` (read unverified, as actions/scaleset ``client.go`` does) and once more on a 401.
Message sessions carry their own message-queue token, refreshed (``PATCH`` the session) and the
call made once more when the queue answers 401.

Every request goes through `GitHubClient.send`: the same timeouts, 5xx and connection retries
with backoff, rate-limit pacing and concurrency cap as the REST client (a long-poll does not hold
a concurrency place). Answers may start with a UTF-8 BOM, which parsing skips.
Refusals become the typed exceptions of ``scaleset_answers`` (all `ActionsServiceError` and so
`GitHubError`).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from agent.github.auth import Secret
from agent.github.client import (
    DeleteOutcome,
    GitHubClient,
    GitHubError,
    JitConfig,
    RunnerTarget,
)
from agent.github.scaleset_answers import (
    JobStillRunning,
    RunnerNotFound,
    ScaleSetNotFound,
    SessionGone,
    json_body,
    parse_body,
    service_error,
    value_items,
)
from agent.github.scaleset_types import (
    MessageSession,
    ProtocolError,
    RunnerGroup,
    RunnerReference,
    ScaleSet,
    ScaleSetMessage,
    ScaleSetSpec,
)
from agent.github.transport import backoff_delay

API_VERSION = "6.0-preview"
ADMIN_REFRESH_MARGIN = 60.0  # seconds before the admin token's exp (actions/scaleset client.go)
REGISTRATION_ATTEMPTS = 3  # runner-registration is retried on 401/403 (a new token may lag)
LONG_POLL_TIMEOUT = 90.0  # seconds; GitHub holds a poll ~50 s before answering 202
SCALE_SETS = "_apis/runtime/runnerscalesets"
AGENTS = "_apis/distributedtask/pools/0/agents"


def jwt_expiry(token: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying it (it is GitHub's to verify)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        raise ProtocolError("the Actions service admin token is not a JWT with 'exp'") from None


@dataclass(frozen=True)
class _Admin:
    url: str  # the Actions service base, ending in "/"
    token: Secret = field(repr=False)
    expires_at: float


class ScaleSetClient:
    """One registration scope's scale-set calls (an organization or a repository).

    ``github_url`` is the web URL the config URL is built from (``https://github.com``, a GHES
    host, the emulator's base); REST calls go through ``github`` (its ``api_url``). The
    caller owns ``github`` and closes it; this object holds only tokens.
    """

    def __init__(
        self,
        github: GitHubClient,
        target: RunnerTarget,
        *,
        github_url: str,
        installation_id: int | None = None,
        clock: Callable[[], float] = time.time,
        long_poll_timeout: float = LONG_POLL_TIMEOUT,
    ) -> None:
        self._github = github
        self._target = target
        self.config_url = f"{github_url.rstrip('/')}/{target.repository or target.organization}"
        self._installation_id = installation_id
        self._clock = clock
        self._long_poll_timeout = long_poll_timeout
        self._admin: _Admin | None = None
        self._admin_lock = trio.Lock()
        self._session_locks: dict[str, trio.Lock] = {}

    # -- the admin connection -------------------------------------------------------------

    async def _registration_token(self) -> str:
        path = f"{self._target.path}/actions/runners/registration-token"
        installation = self._installation_id
        if installation is None and self._github.is_app:
            installation = await self._github.installation_id(self._target)
        response = await self._github.request("POST", path, installation_id=installation)
        return str(self._github.check(response, path, 201).json()["token"])

    async def _register(self) -> _Admin:
        """Registration token → runner-registration: the Actions base and an admin token."""
        token = await self._registration_token()
        path = "/actions/runner-registration"
        for attempt in range(1, REGISTRATION_ATTEMPTS + 1):
            response = await self._github.send(
                "POST",
                path,
                authorization=f"RemoteAuth {token}",
                gate="registration",
                json={"url": self.config_url, "runner_event": "register"},
            )
            if response.status_code in (401, 403) and attempt < REGISTRATION_ATTEMPTS:
                await trio.sleep(backoff_delay(attempt))
                continue
            if not 200 <= response.status_code < 300:
                raise GitHubError(
                    "POST", path, response.status_code, str(parse_body(response) or "no message")
                )
            body = json_body("POST", response)
            url, admin = body.get("url"), body.get("token")
            if not isinstance(url, str) or not url or not isinstance(admin, str) or not admin:
                raise ProtocolError("runner-registration answered without 'url' and 'token'")
            return _Admin(
                url=url.rstrip("/") + "/", token=Secret(admin), expires_at=jwt_expiry(admin)
            )
        raise AssertionError("unreachable")

    async def _connection(self, *, stale: _Admin | None = None) -> _Admin:
        """The admin connection, renewed when near expiry or when ``stale`` was refused."""
        async with self._admin_lock:
            current = self._admin
            fresh_enough = (
                current is not None
                and current is not stale
                and current.expires_at - ADMIN_REFRESH_MARGIN > self._clock()
            )
            if not fresh_enough:
                current = self._admin = await self._register()
            assert current is not None
            return current

    async def _actions(
        self,
        method: str,
        path: str,
        *,
        expected: tuple[int, ...],
        json: object = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """An admin call; a 401 renews the admin token and the call is made once more."""
        stale: _Admin | None = None
        for _ in range(2):
            admin = await self._connection(stale=stale)
            response = await self._github.send(
                method,
                admin.url + path,
                authorization=f"Bearer {admin.token.reveal()}",
                gate="actions",
                json=json,
                params={**(params or {}), "api-version": API_VERSION},
                headers={"Accept": "application/json"},
            )
            if response.status_code != 401:
                break
            stale = admin
        if response.status_code not in expected:
            raise service_error(method, response)
        return response

    # -- runner groups and scale sets -----------------------------------------------------

    async def runner_group(self, name: str) -> RunnerGroup:
        """A runner group by name (case-insensitive at GitHub); repositories have only the
        default group."""
        response = await self._actions(
            "GET", "_apis/runtime/runnergroups/", expected=(200,), params={"groupName": name}
        )
        groups = [RunnerGroup.from_json(g) for g in value_items("GET", response)]
        if len(groups) != 1:
            found = "none" if not groups else f"{len(groups)} of them"
            raise GitHubError(
                "GET",
                response.request.url.path,
                200,
                f'{self._target.path[1:]} has no single runner group "{name}" ({found}); '
                "fix runner_group in the pool or create the group",
            )
        return groups[0]

    async def get_scale_set(self, name: str, runner_group_id: int) -> ScaleSet | None:
        response = await self._actions(
            "GET",
            SCALE_SETS,
            expected=(200,),
            params={"runnerGroupId": runner_group_id, "name": name},
        )
        found = [ScaleSet.from_json(s) for s in value_items("GET", response)]
        if len(found) > 1:
            raise ProtocolError(f"{len(found)} scale sets are named {name!r} in one group")
        return found[0] if found else None

    async def get_scale_set_by_id(self, scale_set_id: int) -> ScaleSet:
        response = await self._actions("GET", f"{SCALE_SETS}/{scale_set_id}", expected=(200,))
        return ScaleSet.from_json(json_body("GET", response))

    async def create_scale_set(self, spec: ScaleSetSpec, runner_group_id: int) -> ScaleSet:
        response = await self._actions(
            "POST", SCALE_SETS, expected=(200,), json=spec.body(runner_group_id)
        )
        return ScaleSet.from_json(json_body("POST", response))

    async def update_scale_set(
        self, scale_set_id: int, spec: ScaleSetSpec, runner_group_id: int
    ) -> ScaleSet:
        path = f"{SCALE_SETS}/{scale_set_id}"
        body = spec.body(runner_group_id)
        response = await self._actions("PATCH", path, expected=(200,), json=body)
        return ScaleSet.from_json(json_body("PATCH", response))

    async def ensure_scale_set(self, spec: ScaleSetSpec) -> ScaleSet:
        """Find the scale set by name in its group, create it if missing, update it if its
        labels or settings differ (a config reload); idempotent."""
        group = await self.runner_group(spec.runner_group)
        existing = await self.get_scale_set(spec.name, group.id)
        if existing is None:
            return await self.create_scale_set(spec, group.id)
        if existing.matches(spec, group.id):
            return existing
        return await self.update_scale_set(existing.id, spec, group.id)

    async def delete_scale_set(self, scale_set_id: int) -> None:
        await self._actions("DELETE", f"{SCALE_SETS}/{scale_set_id}", expected=(204,))

    # -- runners ----------------------------------------------------------------------------

    async def generate_jit_config(
        self, scale_set_id: int, name: str, *, work_folder: str = "_work"
    ) -> JitConfig:
        """A JIT runner of the scale set; GitHub gives its encoded config once only."""
        response = await self._actions(
            "POST",
            f"{SCALE_SETS}/{scale_set_id}/generatejitconfig",
            expected=(200,),
            json={"name": name, "workFolder": work_folder},
        )
        body = json_body("POST", response)
        runner = RunnerReference.from_json(body.get("runner"))
        encoded = body.get("encodedJITConfig")
        if not isinstance(encoded, str) or not encoded:
            raise ProtocolError("generatejitconfig answered without 'encodedJITConfig'")
        return JitConfig(runner_id=runner.id, runner_name=runner.name, encoded=Secret(encoded))

    async def get_runner(self, runner_id: int) -> RunnerReference | None:
        try:
            response = await self._actions("GET", f"{AGENTS}/{runner_id}", expected=(200,))
        except RunnerNotFound:
            return None
        return RunnerReference.from_json(json_body("GET", response))

    async def get_runner_by_name(self, name: str) -> RunnerReference | None:
        response = await self._actions("GET", AGENTS, expected=(200,), params={"agentName": name})
        found = [RunnerReference.from_json(r) for r in value_items("GET", response)]
        if len(found) > 1:
            raise ProtocolError(f"{len(found)} runners are named {name!r}")
        return found[0] if found else None

    async def delete_runner(self, runner_id: int) -> DeleteOutcome:
        """Deregister a runner: gone already counts as done; a running job leaves it be."""
        try:
            await self._actions("DELETE", f"{AGENTS}/{runner_id}", expected=(204,))
        except RunnerNotFound:
            return DeleteOutcome.NOT_FOUND
        except JobStillRunning:
            return DeleteOutcome.BUSY
        return DeleteOutcome.DELETED

    # -- message sessions -------------------------------------------------------------------

    async def create_session(self, scale_set_id: int, owner: str) -> MessageSession:
        """Open the scale set's message session; `SessionConflict` while another is live."""
        response = await self._actions(
            "POST",
            f"{SCALE_SETS}/{scale_set_id}/sessions",
            expected=(200,),
            json={"ownerName": owner},
        )
        return MessageSession.from_json(json_body("POST", response), scale_set_id)

    async def refresh_session(self, session: MessageSession) -> None:
        """A new message-queue token for ``session`` (in place); `SessionGone` when GitHub no
        longer has the session (404, scaleset PR #123)."""
        path = f"{SCALE_SETS}/{session.scale_set_id}/sessions/{session.id}"
        response = await self._actions("PATCH", path, expected=(200, 404))
        if response.status_code == 404:
            error = service_error("PATCH", response)
            raise error if isinstance(error, ScaleSetNotFound) else SessionGone("PATCH", response)
        session.update(MessageSession.from_json(json_body("PATCH", response), session.scale_set_id))

    async def delete_session(self, session: MessageSession) -> None:
        """Close the session; one GitHub already dropped (400 "not valid", 404) counts as closed."""
        await self.delete_session_id(session.scale_set_id, session.id)

    async def delete_session_id(self, scale_set_id: int, session_id: str) -> None:
        """`delete_session` by id: also a session a previous process opened and never closed."""
        path = f"{SCALE_SETS}/{scale_set_id}/sessions/{session_id}"
        response = await self._actions("DELETE", path, expected=(204, 400, 404))
        if response.status_code == 204:
            return
        error = service_error("DELETE", response)
        gone = response.status_code == 404 or "SessionExpiredException" in error.type_name
        if not gone or isinstance(error, ScaleSetNotFound):
            raise error

    async def _queue(
        self,
        session: MessageSession,
        method: str,
        url: str,
        *,
        expected: tuple[int, ...],
        json: object = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        long_poll: bool = False,
    ) -> httpx.Response:
        """A call with the message-queue token; a 401 refreshes the session once and retries."""
        lock = self._session_locks.setdefault(session.id, trio.Lock())
        for attempt in range(2):
            token = session.queue_token
            response = await self._github.send(
                method,
                url,
                authorization=f"Bearer {token.reveal()}",
                gate="message queue",
                json=json,
                params=params,
                headers=headers,
                http_timeout=self._long_poll_timeout if long_poll else None,
                long_poll=long_poll,
            )
            if response.status_code != 401 or attempt == 1:
                break
            async with lock:
                if session.queue_token is token:  # nobody refreshed it meanwhile
                    await self.refresh_session(session)
        if response.status_code not in expected:
            raise service_error(method, response)
        return response

    async def get_message(
        self, session: MessageSession, last_message_id: int, max_capacity: int
    ) -> ScaleSetMessage | None:
        """Long-poll the queue: the next message after ``last_message_id``, or ``None`` when
        GitHub had nothing for ~50 s (202). Messages not deleted come again (same id) to a poll
        with a lower ``last_message_id``."""
        params = {"lastMessageId": last_message_id} if last_message_id > 0 else None
        response = await self._queue(
            session,
            "GET",
            session.queue_url,
            expected=(200, 202),
            params=params,
            headers={
                "Accept": f"application/json; api-version={API_VERSION}",
                "X-ScaleSetMaxCapacity": str(max(0, max_capacity)),
            },
            long_poll=True,
        )
        if response.status_code == 202:
            return None
        return ScaleSetMessage.from_json(json_body("GET", response))

    async def delete_message(self, session: MessageSession, message_id: int) -> None:
        """Acknowledge a message: it is not delivered again."""
        await self._queue(
            session,
            "DELETE",
            f"{session.queue_url.rstrip('/')}/{message_id}",
            expected=(204,),
            headers={"Content-Type": "application/json"},
        )

    async def acquire_jobs(self, session: MessageSession, request_ids: Sequence[int]) -> list[int]:
        """Acquire offered jobs (``JobAvailable`` runner request ids); the ids GitHub granted.
        Sent with the message-queue token, as the upstream clients do."""
        admin = await self._connection()
        response = await self._queue(
            session,
            "POST",
            f"{admin.url}{SCALE_SETS}/{session.scale_set_id}/acquirejobs",
            expected=(200,),
            json=list(request_ids),
            params={"api-version": API_VERSION},
            headers={"Accept": "application/json"},
        )
        granted = value_items("POST", response)
        if not all(isinstance(i, int) for i in granted):
            raise ProtocolError("acquirejobs answered ids that are not integers")
        return [int(i) for i in granted]
