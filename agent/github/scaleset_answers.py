"""What the Actions service answers: JSON bodies (a UTF-8 BOM skipped) and typed refusals.

Kept apart from the scale-set client (``scaleset``) so the protocol's calls read as calls:
refusals become typed exceptions (`SessionConflict`, `SessionGone`, `ScaleSetNotFound`,
`RunnerExists`, `RunnerNotFound`, `JobStillRunning`, `TokenRefused`), all `ActionsServiceError`
and so `GitHubError`, naming the ``ActivityId`` / ``X-GitHub-Request-Id`` to quote to GitHub.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from agent.github.records import GitHubError
from agent.github.scaleset_types import ProtocolError


class ActionsServiceError(GitHubError):
    """The Actions service refused: its ``typeName`` and the ids GitHub support asks for."""

    def __init__(self, method: str, response: httpx.Response, *, context: str = "") -> None:
        body = parse_body(response)
        self.type_name = str(body.get("typeName", "")) if isinstance(body, dict) else ""
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
        message = message or response.reason_phrase or "no message"
        self.activity_id = response.headers.get("activityid")
        self.request_id = response.headers.get("x-github-request-id")
        ids = ", ".join(
            f"{name} {value}"
            for name, value in (("ActivityId", self.activity_id), ("request", self.request_id))
            if value
        )
        shown = f"{self.type_name.split(',')[0]}: {message}" if self.type_name else message
        if context:
            shown = f"{shown}; {context}"
        if ids:
            shown = f"{shown} ({ids})"
        super().__init__(method, response.request.url.path, response.status_code, shown)


class ScaleSetNotFound(ActionsServiceError):
    """The scale set is gone at GitHub (deleted there, or never in this scope)."""


class SessionConflict(ActionsServiceError):
    """409: the scale set already has a live session (another host, or our own from before a
    crash, which GitHub drops about 90 s after its last poll)."""


class SessionGone(ActionsServiceError):
    """The service no longer knows the session (expired or evicted): open a new one."""


class RunnerExists(ActionsServiceError):
    """A runner with that name is already registered."""


class RunnerNotFound(ActionsServiceError):
    """No such runner."""


class JobStillRunning(ActionsServiceError):
    """The runner is running a job and cannot be removed now."""


class TokenRefused(ActionsServiceError):
    """401 although the token was just refreshed: the credentials themselves are refused."""


_BY_TYPE: Sequence[tuple[str, type[ActionsServiceError]]] = (
    ("RunnerScaleSetSessionConflictException", SessionConflict),
    ("RunnerScaleSetNotFoundException", ScaleSetNotFound),
    ("AgentExistsException", RunnerExists),
    ("AgentNotFoundException", RunnerNotFound),
    ("JobStillRunningException", JobStillRunning),
)


def parse_body(response: httpx.Response) -> Any:
    """The answer's JSON, ``None`` when it is not JSON. Parsed from the bytes: `json.loads`
    detects the encoding of bytes and so skips a UTF-8 BOM (decoding to `str` first would keep
    it and fail)."""
    content = response.content
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


def service_error(method: str, response: httpx.Response) -> ActionsServiceError:
    """The typed refusal for an answer the caller did not expect (by ``typeName``, then 401)."""
    body = parse_body(response)
    type_name = str(body.get("typeName", "")) if isinstance(body, dict) else ""
    for marker, kind in _BY_TYPE:
        if marker in type_name:
            return kind(method, response)
    if response.status_code == 401:
        return TokenRefused(method, response)
    return ActionsServiceError(method, response)


def json_body(method: str, response: httpx.Response) -> Any:
    """The answer's JSON; a `GitHubError` when it has none."""
    body = parse_body(response)
    if body is None:
        raise GitHubError(method, response.request.url.path, response.status_code, "no JSON body")
    return body


def value_items(method: str, response: httpx.Response) -> list[Any]:
    """The ``value`` of a ``{count, value}`` answer."""
    body = json_body(method, response)
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, list):
        raise ProtocolError(f"{response.request.url.path}: no list under 'value'")
    return value
