"""The private runner protocol under a JIT config's ``serverUrl`` (``/_runner``).

It stands in for GitHub's broker, which the real runner talks to after reading its JIT config
(docs/github.md §8.2): the runner authenticates with the secret from ``.credentials``, opens a
session (it is *online* from then on; a second live session is a conflict, the real runner's
SessionConflict, §8.3), long-polls for a job message, runs it, and reports the result. Kept
trivially parseable for a busybox shell: every answer is one line of compact JSON and the job's
script travels base64-encoded.

    POST /_runner/sessions {os, agent: {name, version}?}
                                             -> 201 {"sessionId": ...}  | 401 | 409
    GET  /_runner/sessions/{sid}/message[?runnerVersion=2.336.0]
                                             -> 200 {"job_id": N, "script": b64[,
                                                "container": {"image": ...}]} | 204 after
                                                POLL_SECONDS | 404 runner removed or session
                                                gone | 403 version below the floor
    POST /_runner/sessions/{sid}/close       -> 204
    POST /_runner/jobs/{job_id}/result?exit_code=N   (body: the raw log) -> 204

Refusals are shaped as the real services shape them, so a stand-in can tell them apart the way
the real runner does: unknown or removed credentials are OAuth ``invalid_client`` (401);
broker errors carry ``errorKind`` (``RunnerNotFound``, ``RunnerSessionInvalid``,
``RunnerVersionTooOld``; `errors.BrokerError`). The real runner sends its version as the
``runnerVersion`` query parameter of every message poll (actions/runner
src/Sdk/WebApi/WebApi/BrokerHttpClient.cs, ``GetRunnerMessageAsync``).
"""

from __future__ import annotations

import base64

import trio

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.errors import GitHubError
from agent.emulator.models import Job
from agent.emulator.state import Emulator

POLL_SECONDS = 25.0  # a long-poll answers 204 after this long without a job


def _secret(request: Request) -> str:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise errors.OAuthError()
    return secret


def build_routes(emulator: Emulator) -> list[Route]:
    async def open_session(request: Request) -> Response:
        body = request.json()
        os_name = body.get("os", "Linux") if isinstance(body, dict) else "Linux"
        agent = body.get("agent") if isinstance(body, dict) else None
        version = agent.get("version") if isinstance(agent, dict) else None
        session = emulator.open_session(
            _secret(request),
            os_name=str(os_name),
            version=version if isinstance(version, str) else None,
        )
        return Response.json(201, {"sessionId": session.id})

    async def message(request: Request, session_id: str) -> Response:
        secret = _secret(request)
        version = request.query_value("runnerVersion")
        outcome: Job | GitHubError | None = None
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                nonlocal outcome
                with trio.move_on_after(POLL_SECONDS):
                    try:
                        outcome = await emulator.wait_message(secret, session_id, version=version)
                    except GitHubError as error:  # raised below, outside the nursery's group
                        outcome = error
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                await request.wait_disconnect()  # the runner went away: stop holding the poll
                nursery.cancel_scope.cancel()

            nursery.start_soon(poll)
            nursery.start_soon(watch)
        if isinstance(outcome, GitHubError):
            raise outcome
        if outcome is None:
            return Response(status=204)
        script = base64.b64encode(outcome.script.encode()).decode()
        message: dict[str, object] = {"job_id": outcome.id, "script": script}
        if outcome.container is not None:  # the real message's jobContainer
            message["container"] = {"image": outcome.container}
        return Response.json(200, message)

    async def close_session(request: Request, session_id: str) -> Response:
        emulator.close_session(_secret(request), session_id)
        return Response(status=204)

    async def result(request: Request, job_id: str) -> Response:
        code = request.query_value("exit_code") or ""
        if not job_id.isdigit() or not code.lstrip("-").isdigit():
            raise errors.not_found()
        emulator.report_result(_secret(request), int(job_id), int(code), request.body)
        return Response(status=204)

    return [
        route("POST", "/_runner/sessions", open_session),
        route("GET", "/_runner/sessions/{session_id}/message", message),
        route("POST", "/_runner/sessions/{session_id}/close", close_session),
        route("POST", "/_runner/jobs/{job_id}/result", result),
    ]
