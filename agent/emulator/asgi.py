"""A raw ASGI application: routing, request bodies, the lifespan protocol, error answers.

No web framework: the emulator needs a route table and JSON, nothing more. Errors become HTTP
answers here and only here: `GitHubError` as GitHub's JSON error body, anything else as a bare
500 (logged, no details to the client).

The ``lifespan`` scope is answered properly (startup/shutdown complete): hypercorn's trio worker
fails at start-up when an app simply returns on it (docs/design.md §4).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from agent.emulator.errors import REST_DOCS, GitHubError, problems_parsing_json

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024  # bytes; the largest request is a job log

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(kw_only=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = field(repr=False)
    receive: Receive = field(repr=False)

    def json(self, docs: str = REST_DOCS) -> Any:
        """The body as JSON; an empty body is ``None``; bad JSON is GitHub's 400."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise problems_parsing_json(docs) from None

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    async def wait_disconnect(self) -> None:
        """Return once the client has gone away (for long-polls)."""
        while (await self.receive())["type"] != "http.disconnect":
            pass


@dataclass(kw_only=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: object, headers: Mapping[str, str] | None = None) -> Response:
        return cls(
            status=status,
            body=json.dumps(value, separators=(",", ":")).encode(),
            headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
        )


Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler  # called as handler(request, **named groups of the pattern)


def route(method: str, path: str, handler: Handler) -> Route:
    """``path`` with ``{name}`` parameters matching one path segment, e.g. ``/repos/{owner}``."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"^{regex}$"), handler)


class App:
    """The ASGI callable over a route table."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._answer(scope, receive)
        headers = [(k.lower().encode(), v.encode()) for k, v in response.headers.items()]
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _answer(self, scope: Scope, receive: Receive) -> Response:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Response(status=499)
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                return Response.json(413, {"message": "Payload too large"})
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            headers=headers,
            body=bytes(body),
            receive=receive,
        )
        try:
            for candidate in self._routes:
                match = candidate.pattern.match(request.path)
                if match and candidate.method == request.method:
                    return await candidate.handler(request, **match.groupdict())
            # GitHub answers an unknown path or a wrong method alike: 404 Not Found.
            raise GitHubError(404, "Not Found")
        except GitHubError as error:
            return Response.json(error.status, error.body(), error.headers)
        except Exception:
            log.exception("emulator: %s %s failed", request.method, request.path)
            return Response.json(500, {"message": "Server Error"})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; the emulator's state needs no set-up of its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
