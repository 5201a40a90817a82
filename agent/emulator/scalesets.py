"""The Actions service behind runner scale sets: scale sets, message sessions, the job queue.

`ActionsService` is the part of the emulated GitHub that a scale-set listener talks to after
trading a registration token for an admin token (docs/scale-set.md). It belongs to one
`Emulator` (``emulator.actions``), reads its repositories, runner groups and runners, and is told
by it when a job is queued, started, completed or cancelled. Its records are in
`agent.emulator.scaleset_models`, its HTTP side in `agent.emulator.actions_service`. Sources
are named per rule; "(guess)" marks what no source says.

The rules:

- Tokens: registration tokens last an hour (GitHub docs); admin and message-queue tokens are
  JWT-shaped (the clients read ``exp`` unverified: actions/scaleset ``client.go``; GARM
  ``params/github.go``) and refused with 401 once expired. Their lifetimes are settings (guess:
  no source gives them; scaleset's test server uses 10 minutes).
- A job goes to a scale set when the scale set's scope covers the repository and its name plus
  labels (case-insensitive) include every ``runs-on`` label; with several candidates, the oldest
  (routing between same-label scale sets is undefined upstream, actions/scaleset #107). The
  ``workflow_job`` webhooks are sent as for any job (GitHub sends them for every job of a
  workflow, whatever runs it: github/docs #9964; ARC #922).
- A routed job is a *runner request*: ``JobAvailable`` → ``acquirejobs`` (required, as on GHES:
  actions/scaleset #75, #90) → ``JobAssigned`` once the scale set has capacity
  (``X-ScaleSetMaxCapacity`` of the last poll; ARC PR #3431) → an idle runner of that scale set
  takes it (``JobStarted``) → ``JobCompleted``. Only runners of the scale set run its jobs, and
  they run nothing else.
- A ``JobAvailable`` delivered and not acquired within ``acquire_timeout`` is withdrawn:
  ``JobCompleted`` with result ``canceled``, then offered again under a new request id, at most
  ``MAX_REQUEUES`` times, after which the job is cancelled (docs/scale-set.md; the delays between
  offers are not modelled).
- One message session per scale set: a second one is a 409 while the first is live. A session is
  live while it polls or has been seen within ``session_idle`` seconds (an abandoned session was
  measured refused at 60 s and free at 91-92 s against github.com by a public project, "billet",
  in its ADR-006). A poll ends when its client drops the connection (a listener killed
  mid-poll), so the lapse counts from then. A session is never handed over, not even to the
  same ``ownerName`` (same ADR), but any admin token of the scope may close it by id (a
  restarted process has a new one: actions/scaleset deletes its session with whatever admin
  token its client holds by then, refreshed before expiry: inference).
- The queue is the scale set's, not the session's: events are packed into numbered messages of
  at most 50 when polled; a message stays until deleted, so a poll with a lower
  ``lastMessageId`` (a restart, a new session) gets it again with the same id (measured, same
  ADR). Message ids only grow.

All state changes happen on the trio thread; long-polls wait on `_changed` (replaced after every
change) or the next acquire deadline, never by polling.
"""

from __future__ import annotations

import itertools
import json
import secrets
import string
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from agent.emulator.errors import GitHubError
from agent.emulator.models import Job, Runner, RunnerGroup, RunnerScope, iso8601
from agent.emulator.scaleset_models import (
    DISTRIBUTED_TASK,
    MAX_BATCH,
    MAX_REQUEUES,
    REGISTRATION_TOKEN_LIFETIME,
    ActionsError,
    ActionsSettings,
    Label,
    QueueMessage,
    QueueToken,
    RequestState,
    RunnerRequest,
    ScaleSet,
    ScaleSetSession,
    Statistics,
    agent_not_found,
    bad_request,
    make_jwt,
    scale_set_not_found,
    unauthorized,
)

if TYPE_CHECKING:
    from agent.emulator.state import Emulator


class ActionsService:
    """Scale sets and their queues for one `Emulator`; see the module docstring for the rules."""

    def __init__(self, emulator: Emulator, *, clock: Callable[[], float] = time.time) -> None:
        self._emulator = emulator
        self._clock = clock
        self.settings = ActionsSettings()
        self._registration_tokens: dict[str, tuple[RunnerScope, float]] = {}
        self._admin_tokens: dict[str, tuple[RunnerScope, float]] = {}
        self._queue_tokens: dict[str, QueueToken] = {}
        self._scale_set_ids = itertools.count(1)
        self._request_ids = itertools.count(7_848_922)  # int64, as in public listener logs
        self._message_ids = itertools.count(1)  # one sequence: ids only grow, across sessions
        self._scale_sets: dict[int, ScaleSet] = {}
        self._requests: dict[int, RunnerRequest] = {}
        self._by_job: dict[int, RunnerRequest] = {}  # the job's current request
        self._changed = trio.Event()
        self.registrations = 0  # successful runner-registrations (admin tokens handed out)

    @property
    def base_url(self) -> str:
        """The Actions service base handed out by runner-registration (the broker's ``/rest/``)."""
        return f"{self._emulator.base_url}/_actions/rest/"

    @property
    def message_queue_url(self) -> str:
        """One URL for every session, as github.com's broker has it; the token says whose."""
        return f"{self._emulator.base_url}/_actions/scalesets/message"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ---------------------------------------------------------------- tokens

    def issue_registration_token(self, scope: RunnerScope) -> tuple[str, float]:
        """``POST …/actions/runners/registration-token`` (the caller authorized the scope)."""
        now = self._clock()
        for key in [k for k, (_, exp) in self._registration_tokens.items() if exp <= now]:
            del self._registration_tokens[key]
        alphabet = string.ascii_uppercase + string.digits
        token = "".join(secrets.choice(alphabet) for _ in range(29))
        expires_at = now + REGISTRATION_TOKEN_LIFETIME
        self._registration_tokens[token] = (scope, expires_at)
        return token, expires_at

    def register(self, registration_token: str, body: object) -> dict[str, str]:
        """``POST /actions/runner-registration`` with ``RemoteAuth``: the Actions base and an
        admin token for the scope the registration token was made for."""
        grant = self._registration_tokens.get(registration_token)
        if grant is None or grant[1] <= self._clock():
            raise GitHubError(401, "Bad credentials")  # (guess) scaleset retries 401 and 403
        scope = grant[0]
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise GitHubError(422, 'Invalid request.\n\n"url" wasn\'t supplied.')
        if body.get("runner_event") != "register":
            raise GitHubError(422, 'Invalid request.\n\n"runner_event" must be "register".')
        target = scope.repository or scope.organization
        if body["url"].rstrip("/").lower() != f"{self._emulator.base_url}/{target}".lower():
            raise GitHubError(404, "Not Found")  # (guess) the token does not cover that URL
        now = self._clock()
        expires_at = now + self.settings.admin_token_lifetime
        claims = {
            "nameid": str(uuid.uuid4()),
            "scp": "Actions.RunnerAdmin",
            "iss": "https://token.actions.githubusercontent.com",
            "aud": "vso:" + str(uuid.uuid4()),
            "nbf": int(now),
            "iat": int(now),
            "exp": int(expires_at),
        }
        token = make_jwt(claims)
        self._admin_tokens[token] = (scope, expires_at)
        self.registrations += 1
        return {"url": self.base_url, "token": token, "token_schema": "OAuthAccessToken"}

    def admin_scope(self, token: str) -> RunnerScope:
        """The scope an admin token acts for; 401 when unknown or expired."""
        grant = self._admin_tokens.get(token)
        if grant is None or grant[1] <= self._clock():
            raise unauthorized()
        return grant[0]

    def _queue_grant(self, token: str) -> tuple[ScaleSet, ScaleSetSession]:
        grant = self._queue_tokens.get(token)
        if grant is None or grant.expires_at <= self._clock():
            raise unauthorized()
        scale_set = self._scale_sets.get(grant.scale_set_id)
        session = scale_set.session if scale_set is not None else None
        if scale_set is None or session is None or session.id != grant.session_id:
            raise unauthorized()
        if not self._live(session):
            raise unauthorized()
        return scale_set, session

    def _issue_queue_token(self, scale_set: ScaleSet, session: ScaleSetSession) -> str:
        now = self._clock()
        expires_at = now + self.settings.queue_token_lifetime
        for key in [k for k, grant in self._queue_tokens.items() if grant.expires_at <= now]:
            del self._queue_tokens[key]
        claims = {
            "scp": f"Actions.MessageQueue:{scale_set.id}",
            "sid": session.id,
            "nbf": int(now),
            "iat": int(now),
            "exp": int(expires_at),
        }
        token = make_jwt(claims)
        self._queue_tokens[token] = QueueToken(
            scale_set_id=scale_set.id, session_id=session.id, expires_at=expires_at
        )
        return token

    # ---------------------------------------------------------------- test hooks

    def expire_admin_tokens(self) -> None:
        """Every admin token issued so far is refused from now on (401)."""
        self._admin_tokens = {k: (scope, 0.0) for k, (scope, _) in self._admin_tokens.items()}

    def expire_queue_tokens(self) -> None:
        """Every message-queue token issued so far is refused from now on (401)."""
        for grant in self._queue_tokens.values():
            grant.expires_at = 0.0
        self._notify()

    def evict_sessions(self) -> None:
        """The service forgets every session (as github.com's broker did, scaleset PR #123)."""
        for scale_set in self._scale_sets.values():
            scale_set.session = None
        self._notify()

    def check_deadlines(self) -> None:
        """Withdraw offers past ``acquire_timeout`` now (after a test moved the clock)."""
        if self._expire_offers():
            self._notify()

    def scale_sets(self) -> list[ScaleSet]:
        return list(self._scale_sets.values())

    def requests_of(self, job_id: int) -> list[RunnerRequest]:
        """Every runner request the job has had, oldest first."""
        return [r for r in self._requests.values() if r.job.id == job_id]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; the caller bounds the wait."""
        while not condition():
            await self._changed.wait()

    # ---------------------------------------------------------------- runner groups, scale sets

    def runner_groups(self, scope: RunnerScope, name: str | None) -> list[tuple[RunnerGroup, int]]:
        """Groups visible at the scope with their runner counts, by name case-insensitively
        (scaleset asks for ``default``, the REST API calls it ``Default``)."""
        if scope.repository is not None:
            groups = [RunnerGroup(id=1, name="Default", default=True)]
        else:
            assert scope.organization is not None
            groups = self._emulator.runner_groups(scope.organization)
        runners = self._emulator.runners(scope)
        return [
            (group, sum(r.runner_group.id == group.id for r in runners))
            for group in groups
            if name is None or group.name.lower() == name.lower()
        ]

    def _group(self, scope: RunnerScope, group_id: object) -> RunnerGroup:
        if not isinstance(group_id, int) or isinstance(group_id, bool):
            raise bad_request("runnerGroupId must be an integer")
        for group, _ in self.runner_groups(scope, None):
            if group.id == group_id:
                return group
        raise ActionsError(  # typeName and message (guess)
            404, "RunnerGroupNotFoundException", f"Runner group {group_id} not found"
        )

    def find_scale_sets(
        self, scope: RunnerScope, *, runner_group_id: int | None, name: str | None
    ) -> list[ScaleSet]:
        return [
            s
            for s in self._scale_sets.values()
            if s.scope == scope
            and (runner_group_id is None or s.group.id == runner_group_id)
            and (name is None or s.name.lower() == name.lower())
        ]

    def scale_set(self, scope: RunnerScope, scale_set_id: int) -> ScaleSet:
        found = self._scale_sets.get(scale_set_id)
        if found is None or found.scope != scope:
            raise scale_set_not_found(scale_set_id)
        return found

    def create_scale_set(self, scope: RunnerScope, body: object) -> ScaleSet:
        """``POST _apis/runtime/runnerscalesets``: names are unique per runner group (400)."""
        name, group, labels, setting = self._validate_scale_set(scope, body, partial=False)
        assert name is not None and group is not None
        if self.find_scale_sets(scope, runner_group_id=group.id, name=name):
            raise ActionsError(  # 400: GARM util/github/scalesets/scalesets.go; typeName (guess)
                400,
                "RunnerScaleSetExistsException",
                f"A runner scale set with name {name} already exists in runner group {group.name}.",
            )
        scale_set = ScaleSet(
            id=next(self._scale_set_ids),
            name=name,
            scope=scope,
            group=group,
            labels=labels if labels is not None else [],
            runner_setting=setting or {},
            created_on=self._clock(),
        )
        self._scale_sets[scale_set.id] = scale_set
        self._route_waiting_jobs()
        self._notify()
        return scale_set

    def update_scale_set(self, scope: RunnerScope, scale_set_id: int, body: object) -> ScaleSet:
        """``PATCH …/runnerscalesets/{id}``: the fields given replace the stored ones."""
        scale_set = self.scale_set(scope, scale_set_id)
        name, group, labels, setting = self._validate_scale_set(scope, body, partial=True)
        new_name = name if name is not None else scale_set.name
        new_group = group if group is not None else scale_set.group
        clash = self.find_scale_sets(scope, runner_group_id=new_group.id, name=new_name)
        if any(s.id != scale_set.id for s in clash):
            raise ActionsError(
                400,
                "RunnerScaleSetExistsException",
                f"A runner scale set with name {new_name} already exists in runner group "
                f"{new_group.name}.",
            )
        scale_set.name, scale_set.group = new_name, new_group
        if labels is not None:
            scale_set.labels = labels
        if setting is not None:
            scale_set.runner_setting = setting
        self._route_waiting_jobs()
        self._notify()
        return scale_set

    def delete_scale_set(self, scope: RunnerScope, scale_set_id: int) -> None:
        """``DELETE …/runnerscalesets/{id}``: its session and queue go; jobs not yet running
        wait for another runner again."""
        scale_set = self.scale_set(scope, scale_set_id)
        del self._scale_sets[scale_set.id]
        for request in list(self._by_job.values()):
            if request.scale_set_id == scale_set.id and request.state is not RequestState.RUNNING:
                request.state = RequestState.DONE
                del self._by_job[request.job.id]
        self._notify()
        self._emulator.dispatch()

    def _validate_scale_set(
        self, scope: RunnerScope, body: object, *, partial: bool
    ) -> tuple[str | None, RunnerGroup | None, list[Label] | None, dict[str, Any] | None]:
        if not isinstance(body, dict):
            raise bad_request("The request body must be a runner scale set object")
        name = body.get("name")
        if (name is not None or not partial) and (not isinstance(name, str) or not name.strip()):
            raise bad_request("The runner scale set name must be a non-empty string")
        group = None
        if "runnerGroupId" in body or not partial:
            group = self._group(scope, body.get("runnerGroupId"))
        labels = None
        if body.get("labels") is not None:
            raw = body["labels"]
            if not isinstance(raw, list) or not all(
                isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
                for item in raw
            ):
                raise bad_request("labels must be a list of {name, type} objects")
            labels = [Label(name=i["name"], type=str(i.get("type") or "System")) for i in raw]
        setting = body.get("RunnerSetting")
        if setting is not None and not isinstance(setting, dict):
            raise bad_request("RunnerSetting must be an object")
        return name, group, labels, setting

    def statistics(self, scale_set: ScaleSet) -> Statistics:
        self._expire_offers()
        counts = dict.fromkeys(RequestState, 0)
        for request in self._by_job.values():
            if request.scale_set_id == scale_set.id:
                counts[request.state] += 1
        runners = [
            r for r in self._emulator.runners(scale_set.scope) if r.scale_set_id == scale_set.id
        ]
        busy = sum(r.job_id is not None for r in runners)
        return Statistics(
            total_available_jobs=counts[RequestState.AVAILABLE],
            total_acquired_jobs=counts[RequestState.ACQUIRED],
            total_assigned_jobs=counts[RequestState.ASSIGNED] + counts[RequestState.RUNNING],
            total_running_jobs=counts[RequestState.RUNNING],
            total_registered_runners=len(runners),
            total_busy_runners=busy,
            total_idle_runners=len(runners) - busy,
        )

    # ---------------------------------------------------------------- runners

    def generate_jitconfig(
        self, scope: RunnerScope, scale_set_id: int, body: object
    ) -> tuple[Runner, str]:
        """``POST …/{id}/generatejitconfig`` ``{name, workFolder}``: a JIT runner of the scale
        set, registered as any runner is (the stand-in runner accepts its config)."""
        scale_set = self.scale_set(scope, scale_set_id)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise bad_request("The runner name must be a non-empty string")
        work_folder = body.get("workFolder") or "_work"
        if not isinstance(work_folder, str):
            raise bad_request("workFolder must be a string")
        request = {
            "name": body["name"],
            "runner_group_id": scale_set.group.id,
            "labels": scale_set.label_names(),
            "work_folder": work_folder,
        }
        try:
            runner, encoded = self._emulator.generate_jitconfig(scope, request)
        except GitHubError as error:
            if error.status == 409:  # the typeName actions/scaleset maps to RunnerExistsError
                raise ActionsError(
                    409,
                    "AgentExistsException",
                    f"Agent {body['name']} already exists in pool {scale_set.group.id}.",
                    namespace=DISTRIBUTED_TASK,
                ) from None
            raise
        runner.scale_set_id = scale_set.id
        self._notify()
        return runner, encoded

    def runner(self, scope: RunnerScope, runner_id: int) -> Runner:
        try:
            return self._emulator.runner(scope, runner_id)
        except GitHubError:
            raise agent_not_found(runner_id) from None

    def delete_runner(self, scope: RunnerScope, runner_id: int) -> None:
        """``DELETE _apis/distributedtask/pools/0/agents/{id}``: refused while it runs a job."""
        runner = self.runner(scope, runner_id)
        if runner.job_id is not None:
            raise ActionsError(  # status (guess); typeName as actions/scaleset errors.go maps it
                400,
                "JobStillRunningException",
                f"The agent {runner.name} is still running a job.",
                namespace=DISTRIBUTED_TASK,
            )
        self._emulator.delete_runner(scope, runner_id)
        self._notify()

    # ---------------------------------------------------------------- sessions

    def _live(self, session: ScaleSetSession) -> bool:
        return session.polls > 0 or self._clock() - session.last_seen <= self.settings.session_idle

    def create_session(
        self, scope: RunnerScope, scale_set_id: int, body: object
    ) -> tuple[ScaleSet, ScaleSetSession, str]:
        """``POST …/{id}/sessions`` ``{ownerName}``: 409 while another session is live."""
        scale_set = self.scale_set(scope, scale_set_id)
        if not isinstance(body, dict) or not isinstance(body.get("ownerName"), str):
            raise bad_request("ownerName must be given")
        current = scale_set.session
        if current is not None and self._live(current):
            # Message and typeName as GitHub answered a live test (billet, ADR-006).
            raise ActionsError(
                409,
                "RunnerScaleSetSessionConflictException",
                f"The runner scale set {scale_set.name} already has an active session for "
                f"owner {current.owner}.",
            )
        session = ScaleSetSession(
            id=str(uuid.uuid4()), owner=body["ownerName"], last_seen=self._clock()
        )
        scale_set.session = session
        token = self._issue_queue_token(scale_set, session)
        self._notify()
        return scale_set, session, token

    def refresh_session(
        self, scope: RunnerScope, scale_set_id: int, session_id: str
    ) -> tuple[ScaleSet, ScaleSetSession, str]:
        """``PATCH …/sessions/{sid}``: a new message-queue token; 404 for a session the service
        no longer has (message as scaleset PR #123 quotes it)."""
        scale_set = self.scale_set(scope, scale_set_id)
        session = scale_set.session
        if session is None or session.id != session_id or not self._live(session):
            raise ActionsError(
                404,
                "RunnerAdminException",
                "runner referenced a session ID that doesn't exist in redis",
                namespace=None,
            )
        session.last_seen = self._clock()
        return scale_set, session, self._issue_queue_token(scale_set, session)

    def delete_session(self, scope: RunnerScope, scale_set_id: int, session_id: str) -> None:
        """``DELETE …/sessions/{sid}``: 204; a session already gone is a 400 (ARC #4285)."""
        scale_set = self.scale_set(scope, scale_set_id)
        session = scale_set.session
        if session is None or session.id != session_id or not self._live(session):
            raise ActionsError(
                400,
                "RunnerScaleSetSessionExpiredException",
                f"The session identifier {session_id} is not valid.",
            )
        scale_set.session = None
        self._notify()

    # ---------------------------------------------------------------- the message queue

    async def get_message(
        self, token: str, last_message_id: int, capacity: int | None
    ) -> tuple[QueueMessage | None, Statistics]:
        """The long-poll: the first undeleted message after ``last_message_id``, else a new one
        packed from pending events, else ``None`` after ``poll_timeout``. 401 for a token that
        is expired or whose session is gone, also when that happens mid-poll."""
        scale_set, session = self._queue_grant(token)
        if capacity is not None:
            scale_set.capacity = capacity
            self._assign_acquired(scale_set)
        session.polls += 1
        self._notify()  # the session is held: tests wait on that
        try:
            with trio.move_on_after(self.settings.poll_timeout):
                while True:
                    self._expire_offers()
                    scale_set, session = self._queue_grant(token)
                    message = self._next_message(scale_set, last_message_id)
                    if message is not None:
                        return message, self.statistics(scale_set)
                    with trio.move_on_after(self._until_next_deadline()):
                        await self._changed.wait()
            return None, self.statistics(scale_set)
        finally:
            session.polls -= 1
            session.last_seen = self._clock()
            self._notify()

    def _next_message(self, scale_set: ScaleSet, last_message_id: int) -> QueueMessage | None:
        waiting = sorted(i for i in scale_set.messages if i > last_message_id)
        if waiting:
            return scale_set.messages[waiting[0]]
        if not scale_set.events:
            return None
        batch, scale_set.events = scale_set.events[:MAX_BATCH], scale_set.events[MAX_BATCH:]
        now = self._clock()
        for event in batch:  # the acquire deadline runs from the first delivery
            request = self._requests[event["runnerRequestId"]]
            if event["messageType"] == "JobAvailable" and request.offered_at is None:
                request.offered_at = now
        message = QueueMessage(
            id=next(self._message_ids), body=json.dumps(batch, separators=(",", ":"))
        )
        scale_set.messages[message.id] = message
        return message

    def delete_message(self, token: str, message_id: int) -> None:
        """``DELETE {messageQueueUrl}/{id}``: the ack; deleting a deleted message is a no-op."""
        scale_set, session = self._queue_grant(token)
        session.last_seen = self._clock()
        scale_set.messages.pop(message_id, None)

    def acquire_jobs(self, token: str, scale_set_id: int, body: object) -> list[int]:
        """``POST …/{id}/acquirejobs`` with the session's message-queue token: the ids of the
        scale set's requests now acquired (those already acquired included; others left out)."""
        scale_set, session = self._queue_grant(token)
        if scale_set.id != scale_set_id:
            raise unauthorized()
        if not isinstance(body, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in body
        ):
            raise bad_request("The request body must be an array of runner request ids")
        self._expire_offers()
        session.last_seen = self._clock()
        acquired = []
        for request_id in dict.fromkeys(body):
            request = self._requests.get(request_id)
            if request is None or request.scale_set_id != scale_set.id:
                continue
            if request.state is RequestState.AVAILABLE:
                request.state = RequestState.ACQUIRED
            if request.state is not RequestState.DONE:
                acquired.append(request_id)
        self._assign_acquired(scale_set)
        self._notify()
        return acquired

    def acquirable_jobs(self, scope: RunnerScope, scale_set_id: int) -> list[dict[str, Any]]:
        """``GET …/{id}/acquirablejobs`` (GARM): the JobAvailable of every open offer."""
        scale_set = self.scale_set(scope, scale_set_id)
        self._expire_offers()
        return [
            self._event("JobAvailable", r)
            for r in self._by_job.values()
            if r.scale_set_id == scale_set.id and r.state is RequestState.AVAILABLE
        ]

    # ---------------------------------------------------------------- jobs (told by Emulator)

    def job_queued(self, job: Job) -> None:
        """A job was queued: offer it to the first scale set that matches, if any."""
        scale_set = self._match(job)
        if scale_set is not None:
            self._offer(job, scale_set, offers=1)
            self._notify()

    def may_take(self, runner: Runner, job: Job) -> bool:
        """Whether GitHub would give ``job`` to ``runner`` as far as scale sets go: a routed job
        only to its scale set's runners once assigned, a scale-set runner nothing else."""
        request = self._by_job.get(job.id)
        if request is None:
            return runner.scale_set_id is None
        return (
            runner.scale_set_id == request.scale_set_id and request.state is RequestState.ASSIGNED
        )

    def job_started(self, job: Job, runner: Runner) -> None:
        request = self._by_job.get(job.id)
        if request is None or runner.scale_set_id != request.scale_set_id:
            return
        request.state = RequestState.RUNNING
        request.started_at = self._clock()
        self._push(request, self._event("JobStarted", request, runner=runner))

    def job_completed(self, job: Job, runner: Runner) -> None:
        request = self._by_job.pop(job.id, None)
        if request is None:
            return
        request.state = RequestState.DONE
        request.finished_at = self._clock()
        result = "succeeded" if job.exit_code == 0 else "failed"
        self._push(request, self._event("JobCompleted", request, runner=runner, result=result))
        scale_set = self._scale_sets.get(request.scale_set_id)
        if scale_set is not None:
            self._assign_acquired(scale_set)  # a place is free

    def job_cancelled(self, job: Job) -> None:
        request = self._by_job.pop(job.id, None)
        if request is None or request.state is RequestState.DONE:
            return
        request.state = RequestState.DONE
        request.finished_at = self._clock()
        self._push(request, self._event("JobCompleted", request, result="canceled"))

    # ---------------------------------------------------------------- internals

    def _match(self, job: Job) -> ScaleSet | None:
        wanted = {label.lower() for label in job.labels}
        for scale_set in self._scale_sets.values():  # creation order: the oldest wins
            names = {name.lower() for name in scale_set.label_names()}
            if scale_set.scope.covers(job.repository) and wanted <= names:
                return scale_set
        return None

    def _route_waiting_jobs(self) -> None:
        """Offer queued jobs no runner has taken to a scale set that now matches them."""
        for job in self._emulator.queued_jobs():
            if job.id not in self._by_job:
                scale_set = self._match(job)
                if scale_set is not None:
                    self._offer(job, scale_set, offers=1)

    def _offer(self, job: Job, scale_set: ScaleSet, *, offers: int) -> None:
        request = RunnerRequest(
            id=next(self._request_ids),
            job=job,
            scale_set_id=scale_set.id,
            job_guid=str(uuid.uuid4()),
            queued_at=self._clock(),
            offers=offers,
        )
        self._requests[request.id] = request
        self._by_job[job.id] = request
        self._push(request, self._event("JobAvailable", request))

    def _push(self, request: RunnerRequest, event: dict[str, Any]) -> None:
        scale_set = self._scale_sets.get(request.scale_set_id)
        if scale_set is not None:
            scale_set.events.append(event)
        self._notify()

    def _assign_acquired(self, scale_set: ScaleSet) -> None:
        """Assign acquired requests, oldest first, while the scale set has capacity."""
        mine = [r for r in self._by_job.values() if r.scale_set_id == scale_set.id]
        busy = sum(r.state in (RequestState.ASSIGNED, RequestState.RUNNING) for r in mine)
        assigned = False
        for request in sorted(mine, key=lambda r: r.id):
            if scale_set.capacity is not None and busy >= scale_set.capacity:
                break
            if request.state is RequestState.ACQUIRED:
                request.state = RequestState.ASSIGNED
                request.assigned_at = self._clock()
                busy += 1
                assigned = True
                self._push(request, self._event("JobAssigned", request))
        if assigned:
            self._emulator.dispatch()

    def _expire_offers(self) -> bool:
        """Withdraw delivered offers not acquired in time (``canceled``), then offer again."""
        now = self._clock()
        expired = [
            r
            for r in self._by_job.values()
            if r.state is RequestState.AVAILABLE
            and r.offered_at is not None
            and now - r.offered_at >= self.settings.acquire_timeout
        ]
        for request in expired:
            request.state = RequestState.DONE
            request.finished_at = now
            del self._by_job[request.job.id]
            self._push(request, self._event("JobCompleted", request, result="canceled"))
            scale_set = self._scale_sets.get(request.scale_set_id)
            if scale_set is not None and request.offers <= MAX_REQUEUES:
                self._offer(request.job, scale_set, offers=request.offers + 1)
            else:
                self._emulator.cancel_job(request.job.id)
        return bool(expired)

    def _until_next_deadline(self) -> float:
        deadlines = [
            r.offered_at + self.settings.acquire_timeout
            for r in self._by_job.values()
            if r.state is RequestState.AVAILABLE and r.offered_at is not None
        ]
        return max(0.0, min(deadlines) - self._clock()) if deadlines else float("inf")

    def _event(
        self,
        kind: str,
        request: RunnerRequest,
        *,
        runner: Runner | None = None,
        result: str | None = None,
    ) -> dict[str, Any]:
        """One job message (actions/scaleset types.go ``JobMessageBase`` and its kinds)."""
        job = request.job
        repo = job.repository
        event: dict[str, Any] = {"messageType": kind}
        if kind == "JobAvailable":
            event["acquireJobUrl"] = (
                f"{self.base_url}_apis/runtime/runnerscalesets/{request.scale_set_id}/acquirejobs"
            )
        event.update(
            runnerRequestId=request.id,
            repositoryName=repo.name,
            ownerName=repo.owner.login,
            jobId=request.job_guid,
            jobWorkflowRef=(
                f"{repo.full_name}/.github/workflows/{job.workflow_name.lower()}.yml"
                f"@refs/heads/{job.head_branch}"
            ),
            jobDisplayName=job.name,
            workflowRunId=job.run_id,
            eventName="push",
            requestLabels=list(job.labels),
            queueTime=iso8601(job.created_at),
        )
        times = {
            "scaleSetAssignTime": request.assigned_at,
            "runnerAssignTime": request.started_at,
            "finishTime": request.finished_at,
        }
        event.update({key: iso8601(value) for key, value in times.items() if value is not None})
        if runner is not None:
            event.update(runnerId=runner.id, runnerName=runner.name)
        if result is not None:
            event["result"] = result
        return event
