"""GitHub's edge rules for every REST request, as an ASGI layer in front of everything else.

- ``User-Agent`` is required: "Requests with no User-Agent header will be rejected", with a
  403 and a plain-text page (GitHub docs, "Getting started with the REST API", user agent;
  docs/github.md, request headers). An empty value counts as none.
- ``X-GitHub-Api-Version`` selects the API version; without it GitHub uses 2022-11-28; "If you
  specify an API version that is no longer supported, you will receive a 400 error" (GitHub
  docs, API versions), worded as below (observed, expipiplus1/update-nix-fetchgit#79). Every
  answer names the version used in ``X-GitHub-Api-Version-Selected``.

The emulator renders 2022-11-28 only. GitHub also serves 2026-03-10, whose breaking changes the
emulator does not render, so it refuses that version rather than answer in the wrong shape
(`SUPPORTED_VERSIONS` is a parameter for the day it does). The emulator's private paths
(``/_runner``, ``/_emulator``) are not GitHub's API and pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from agent.emulator.asgi import Message, Receive, Scope, Send
from agent.emulator.errors import REST_DOCS
from agent.emulator.ratelimit import PRIVATE_PREFIXES

DEFAULT_VERSION = "2022-11-28"
SUPPORTED_VERSIONS = (DEFAULT_VERSION,)  # newest first
NO_USER_AGENT = (
    "Request forbidden by administrative rules. Please make sure your request has a User-Agent "
    "header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api"
    "#user-agent-required). Check https://developer.github.com for other possible causes."
)

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def unsupported_version_message(asked: str, supported: Sequence[str]) -> str:
    listed = ", ".join(
        f'"{version}"' + (" (most recent)" if i == 0 else "") for i, version in enumerate(supported)
    )
    return (
        f'The version you specified in the "X-GitHub-API-Version" request header, "{asked}", is '
        f"not a supported version. The following versions are currently supported: {listed}."
    )


def require_headers(app: AsgiApp, *, versions: Sequence[str] = SUPPORTED_VERSIONS) -> AsgiApp:
    """Wrap ``app``: refuse REST requests without a User-Agent or with an unknown version."""

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PRIVATE_PREFIXES):
            await app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1").strip()
            for name, value in scope["headers"]
        }
        if not headers.get("user-agent"):
            await _answer(send, 403, NO_USER_AGENT.encode(), "text/html")
            return
        asked = headers.get("x-github-api-version", DEFAULT_VERSION)
        if asked not in versions:
            body = {
                "message": unsupported_version_message(asked, versions),
                "documentation_url": REST_DOCS,
                "status": "400",
            }
            await _answer(send, 400, json.dumps(body).encode(), "application/json; charset=utf-8")
            return
        selected = (b"x-github-api-version-selected", asked.encode())

        async def with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), selected]
            await send(message)

        await app(scope, receive, with_version)

    return checked


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
