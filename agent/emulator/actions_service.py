"""HTTP routes of the scale-set protocol, translated onto `agent.emulator.scalesets`.

GitHub's REST side (rate-limited like the rest of the REST API):

    POST /repos/{o}/{r}/actions/runners/registration-token  (administration: write)  -> 201
    POST /orgs/{org}/actions/runners/registration-token     (org self-hosted runners: write)
    POST /actions/runner-registration   Authorization: RemoteAuth <registration token>
         {url, runner_event: "register"} -> 201 {url: Actions base, token: admin JWT}

The Actions service, under ``/_actions`` (the broker host: ``/rest/`` for the admin API,
``/scalesets/message`` for the queue). Admin routes need ``?api-version=`` (both public clients
always send ``6.0-preview``; that the service insists is a guess) and ``Bearer <admin token>``;
the queue and ``acquirejobs`` take the session's message-queue token:

    GET    _apis/runtime/runnergroups/?groupName=X                 -> {count, value}
    GET    _apis/runtime/runnerscalesets[?runnerGroupId=N&name=S]  -> {count, value}
    POST   _apis/runtime/runnerscalesets                           -> 200 RunnerScaleSet
    GET|PATCH|DELETE _apis/runtime/runnerscalesets/{id}            -> 200 | 200 | 204
    POST   _apis/runtime/runnerscalesets/{id}/generatejitconfig    -> 200 {runner, encodedJITConfig}
    POST   _apis/runtime/runnerscalesets/{id}/acquirejobs          -> 200 {count, value}
    GET    _apis/runtime/runnerscalesets/{id}/acquirablejobs       -> 200 {count, value} | 204
    POST   _apis/runtime/runnerscalesets/{id}/sessions             -> 200 session | 409
    PATCH|DELETE _apis/runtime/runnerscalesets/{id}/sessions/{sid} -> 200 | 204
    GET|DELETE _apis/distributedtask/pools/0/agents/{id}, GET …/agents?agentName=X
    GET    /_actions/scalesets/message[?lastMessageId=N]  X-ScaleSetMaxCapacity -> 200 | 202
    DELETE /_actions/scalesets/message/{id}                                 -> 204

Every Actions-service answer carries ``ActivityId`` and ``X-GitHub-Request-Id`` (the scaleset
client logs both: errors.go; github.com's broker was seen sending only the latter, ARC #4285).

The control API for tests and demos (not GitHub's):

    GET  /_emulator/actions/scalesets   -> 200 [{id, name, scope, statistics, session, unacked}]
    POST /_emulator/actions/expire      {"what": "admin" | "queue" | "sessions" | "offers"} -> 204
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.errors import GitHubError
from agent.emulator.models import Runner, RunnerScope, iso8601
from agent.emulator.scaleset_models import (
    BOM,
    MESSAGE_TYPE,
    QueueMessage,
    ScaleSet,
    ScaleSetSession,
    Statistics,
    bad_request,
    unauthorized,
)
from agent.emulator.scalesets import ActionsService
from agent.emulator.state import Emulator

_DOCS = "https://docs.github.com/rest/actions/self-hosted-runners"
_RUNTIME = "/_actions/rest/_apis/runtime"
_AGENTS = "/_actions/rest/_apis/distributedtask/pools/0/agents"
_QUEUE = "/_actions/scalesets/message"

Handler = Callable[..., Awaitable[Response]]


def _credentials(request: Request, scheme: str) -> str:
    given, _, value = request.headers.get("authorization", "").partition(" ")
    if given.lower() != scheme.lower() or not value.strip():
        raise unauthorized() if scheme == "Bearer" else errors.requires_authentication()
    return value.strip()


def _json(status: int, value: object, *, bom: bool) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(
        status=status,
        body=(BOM + body) if bom else body,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


def _number(text: str) -> int:
    if not text.isdigit():
        raise bad_request(f"{text!r} is not a valid identifier")
    return int(text)


def build_routes(emulator: Emulator) -> list[Route]:
    service: ActionsService = emulator.actions

    def answer(status: int, value: object) -> Response:
        return _json(status, value, bom=service.settings.bom_bodies)

    def traced(handler: Handler) -> Handler:
        """Faults (5xx), then the handler; every answer and error gets the tracing headers."""

        async def wrapped(request: Request, **params: str) -> Response:
            ids = {"ActivityId": str(uuid.uuid4()), "X-GitHub-Request-Id": _request_id()}
            try:
                emulator.maybe_fail()
                response = await handler(request, **params)
            except GitHubError as error:
                error.headers.update(ids)
                raise
            response.headers.update(ids)
            return response

        return wrapped

    def versioned(request: Request) -> None:
        if not request.query_value("api-version"):
            raise GitHubError(  # (guess) the VSS answer to a missing version
                400, "No api-version was supplied for the request. Add ?api-version=6.0-preview."
            )

    def admin(request: Request) -> RunnerScope:
        versioned(request)
        return service.admin_scope(_credentials(request, "Bearer"))

    # ---- GitHub's REST side -------------------------------------------------------------

    async def registration_token(request: Request, **kw: str) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not token.strip():
            raise errors.requires_authentication()
        if scheme.lower() not in ("bearer", "token"):
            raise errors.bad_credentials()
        token = token.strip()
        if "org" in kw:
            docs = f"{_DOCS}#create-a-registration-token-for-an-organization"
            emulator.authorize(
                token,
                permission=("organization_self_hosted_runners", "write"),
                org=kw["org"],
                docs=docs,
            )
            scope = emulator.scope_for(org=kw["org"])
        else:
            docs = f"{_DOCS}#create-a-registration-token-for-a-repository"
            full = f"{kw['owner']}/{kw['repo']}"
            emulator.authorize(
                token, permission=("administration", "write"), repository=full, docs=docs
            )
            scope = emulator.scope_for(repository=full)
        value, expires_at = service.issue_registration_token(scope)
        return Response.json(201, {"token": value, "expires_at": iso8601(expires_at)})

    async def runner_registration(request: Request) -> Response:
        emulator.maybe_fail()
        registration = _credentials(request, "RemoteAuth")
        # Always BOM-prefixed: GARM trims it from this answer (util/github/scalesets/token.go).
        return _json(201, service.register(registration, request.json()), bom=True)

    # ---- runner groups and scale sets ---------------------------------------------------

    async def runner_groups(request: Request) -> Response:
        scope = admin(request)
        found = service.runner_groups(scope, request.query_value("groupName"))
        return answer(
            200,
            count_value(
                {"id": g.id, "name": g.name, "size": size, "isDefaultGroup": g.default}
                for g, size in found
            ),
        )

    async def list_scale_sets(request: Request) -> Response:
        scope = admin(request)
        group = request.query_value("runnerGroupId")
        found = service.find_scale_sets(
            scope,
            runner_group_id=_number(group) if group is not None else None,
            name=request.query_value("name"),
        )
        return answer(200, count_value(scale_set_json(service, s) for s in found))

    async def create_scale_set(request: Request) -> Response:
        scope = admin(request)
        created = service.create_scale_set(scope, request.json())
        return answer(200, scale_set_json(service, created))

    async def get_scale_set(request: Request, id: str) -> Response:
        found = service.scale_set(admin(request), _number(id))
        return answer(200, scale_set_json(service, found))

    async def update_scale_set(request: Request, id: str) -> Response:
        scope = admin(request)
        updated = service.update_scale_set(scope, _number(id), request.json())
        return answer(200, scale_set_json(service, updated))

    async def delete_scale_set(request: Request, id: str) -> Response:
        service.delete_scale_set(admin(request), _number(id))
        return Response(status=204)

    async def generate_jitconfig(request: Request, id: str) -> Response:
        scope = admin(request)
        runner, encoded = service.generate_jitconfig(scope, _number(id), request.json())
        reference = runner_reference_json(runner, online=False)
        return answer(200, {"runner": reference, "encodedJITConfig": encoded})

    async def acquire_jobs(request: Request, id: str) -> Response:
        versioned(request)
        token = _credentials(request, "Bearer")
        acquired = service.acquire_jobs(token, _number(id), request.json())
        return answer(200, count_value(acquired))

    async def acquirable_jobs(request: Request, id: str) -> Response:
        jobs = service.acquirable_jobs(admin(request), _number(id))
        return answer(200, count_value(jobs)) if jobs else Response(status=204)

    # ---- sessions and the queue ---------------------------------------------------------

    async def create_session(request: Request, id: str) -> Response:
        scope = admin(request)
        scale_set, session, token = service.create_session(scope, _number(id), request.json())
        return answer(200, session_json(service, scale_set, session, token))

    async def refresh_session(request: Request, id: str, session_id: str) -> Response:
        scope = admin(request)
        scale_set, session, token = service.refresh_session(scope, _number(id), session_id)
        return answer(200, session_json(service, scale_set, session, token))

    async def delete_session(request: Request, id: str, session_id: str) -> Response:
        service.delete_session(admin(request), _number(id), session_id)
        return Response(status=204)

    async def get_message(request: Request) -> Response:
        token = _credentials(request, "Bearer")
        last = request.query_value("lastMessageId") or "0"
        capacity = request.headers.get("x-scalesetmaxcapacity")
        if not last.isdigit() or (capacity is not None and not capacity.strip().isdigit()):
            raise bad_request("lastMessageId and X-ScaleSetMaxCapacity must be whole numbers")
        polled: tuple[QueueMessage | None, Statistics] | GitHubError | None = None
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                nonlocal polled
                try:
                    polled = await service.get_message(
                        token, int(last), int(capacity) if capacity is not None else None
                    )
                except GitHubError as error:  # raised below, outside the nursery's group
                    polled = error
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                # A listener killed mid-poll (SIGKILL) drops the connection: the poll ends now,
                # so its session lapses ``session_idle`` after that, as measured on github.com.
                await request.wait_disconnect()
                nursery.cancel_scope.cancel()

            nursery.start_soon(poll)
            nursery.start_soon(watch)
        if isinstance(polled, GitHubError):
            raise polled
        if polled is None:  # the client went away; nobody reads this answer
            return Response(status=499)
        message, statistics = polled
        if message is None:
            return Response(status=202)
        return answer(200, message_json(message, statistics))

    async def delete_message(request: Request, message_id: str) -> Response:
        service.delete_message(_credentials(request, "Bearer"), _number(message_id))
        return Response(status=204)

    # ---- runners --------------------------------------------------------------------------

    async def find_runners(request: Request) -> Response:
        scope = admin(request)
        name = request.query_value("agentName")
        found = [r for r in emulator.runners(scope) if name is None or r.name == name]
        return answer(
            200,
            count_value(runner_reference_json(r, online=emulator.is_online(r)) for r in found),
        )

    async def get_runner(request: Request, id: str) -> Response:
        runner = service.runner(admin(request), _number(id))
        return answer(200, runner_reference_json(runner, online=emulator.is_online(runner)))

    async def delete_runner(request: Request, id: str) -> Response:
        service.delete_runner(admin(request), _number(id))
        return Response(status=204)

    # ---- control API --------------------------------------------------------------------

    async def control_scale_sets(request: Request) -> Response:
        return Response.json(
            200,
            [
                {
                    "id": s.id,
                    "name": s.name,
                    "scope": str(s.scope),
                    "statistics": service.statistics(s).json(),
                    "session": {"id": s.session.id, "owner": s.session.owner}
                    if s.session is not None
                    else None,
                    "unacked": sorted(s.messages),
                }
                for s in service.scale_sets()
            ],
        )

    async def control_expire(request: Request) -> Response:
        body = request.json()
        actions = {
            "admin": service.expire_admin_tokens,
            "queue": service.expire_queue_tokens,
            "sessions": service.evict_sessions,
            "offers": service.check_deadlines,
        }
        what = body.get("what") if isinstance(body, dict) else None
        if what not in actions:
            raise GitHubError(422, f"'what' must be one of {sorted(actions)}")
        actions[what]()
        return Response(status=204)

    scale_sets = f"{_RUNTIME}/runnerscalesets"
    return [
        route(
            "POST", "/repos/{owner}/{repo}/actions/runners/registration-token", registration_token
        ),
        route("POST", "/orgs/{org}/actions/runners/registration-token", registration_token),
        route("POST", "/actions/runner-registration", runner_registration),
        # scaleset asks for ".../runnergroups/?groupName=" (url.JoinPath keeps the slash),
        # GARM for ".../runnergroups?groupName=" (path.Join drops it): both are served.
        route("GET", f"{_RUNTIME}/runnergroups/", traced(runner_groups)),
        route("GET", f"{_RUNTIME}/runnergroups", traced(runner_groups)),
        route("GET", scale_sets, traced(list_scale_sets)),
        route("POST", scale_sets, traced(create_scale_set)),
        route("GET", f"{scale_sets}/{{id}}", traced(get_scale_set)),
        route("PATCH", f"{scale_sets}/{{id}}", traced(update_scale_set)),
        route("DELETE", f"{scale_sets}/{{id}}", traced(delete_scale_set)),
        route("POST", f"{scale_sets}/{{id}}/generatejitconfig", traced(generate_jitconfig)),
        route("POST", f"{scale_sets}/{{id}}/acquirejobs", traced(acquire_jobs)),
        route("GET", f"{scale_sets}/{{id}}/acquirablejobs", traced(acquirable_jobs)),
        route("POST", f"{scale_sets}/{{id}}/sessions", traced(create_session)),
        route("PATCH", f"{scale_sets}/{{id}}/sessions/{{session_id}}", traced(refresh_session)),
        route("DELETE", f"{scale_sets}/{{id}}/sessions/{{session_id}}", traced(delete_session)),
        route("GET", _AGENTS, traced(find_runners)),
        route("GET", f"{_AGENTS}/{{id}}", traced(get_runner)),
        route("DELETE", f"{_AGENTS}/{{id}}", traced(delete_runner)),
        route("GET", _QUEUE, traced(get_message)),
        route("DELETE", f"{_QUEUE}/{{message_id}}", traced(delete_message)),
        route("GET", "/_emulator/actions/scalesets", control_scale_sets),
        route("POST", "/_emulator/actions/expire", control_expire),
    ]


def _request_id() -> str:
    """``X-GitHub-Request-Id``'s form, e.g. ``FDE7:2CEC23:20F50E1:21AB6FB:6A94D802``."""
    parts = (secrets.token_hex(n).upper() for n in (2, 3, 4, 4, 4))
    return ":".join(parts)


def scale_set_json(service: ActionsService, scale_set: ScaleSet) -> dict[str, Any]:
    """``RunnerScaleSet`` (actions/scaleset types.go)."""
    return {
        "id": scale_set.id,
        "name": scale_set.name,
        "runnerGroupId": scale_set.group.id,
        "runnerGroupName": scale_set.group.name,
        "labels": [{"type": label.type, "name": label.name} for label in scale_set.labels],
        "RunnerSetting": dict(scale_set.runner_setting),
        "createdOn": iso8601(scale_set.created_on),
        "runnerJitConfigUrl": (
            f"{service.base_url}_apis/runtime/runnerscalesets/{scale_set.id}/generatejitconfig"
        ),
        "statistics": service.statistics(scale_set).json(),
    }


def runner_reference_json(runner: Runner, *, online: bool) -> dict[str, Any]:
    """``RunnerReference`` (actions/scaleset types.go; the fuller field set from GARM params)."""
    return {
        "id": runner.id,
        "name": runner.name,
        "os": runner.os,
        "runnerScaleSetId": runner.scale_set_id or 0,
        "runnerGroupId": runner.runner_group.id,
        "runnerGroupName": runner.runner_group.name,
        "enabled": True,
        "ephemeral": True,
        "status": "online" if online else "offline",
        "busy": runner.job_id is not None,
        "labels": [{"type": "System", "name": name} for name in runner.labels],
    }


def session_json(
    service: ActionsService, scale_set: ScaleSet, session: ScaleSetSession, token: str
) -> dict[str, Any]:
    """``RunnerScaleSetSession`` (actions/scaleset types.go)."""
    return {
        "sessionId": session.id,
        "ownerName": session.owner,
        "runnerScaleSet": scale_set_json(service, scale_set),
        "messageQueueUrl": service.message_queue_url,
        "messageQueueAccessToken": token,
        "statistics": service.statistics(scale_set).json(),
    }


def message_json(message: QueueMessage, statistics: Statistics) -> dict[str, Any]:
    return {
        "messageId": message.id,
        "messageType": MESSAGE_TYPE,
        "body": message.body,
        "statistics": statistics.json(),
    }


def count_value(items: Iterable[Any]) -> dict[str, Any]:
    """The ``{count, value}`` list envelope of the Actions service."""
    value = list(items)
    return {"count": len(value), "value": value}
