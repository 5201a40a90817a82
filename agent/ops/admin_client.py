"""Client side of the admin socket: sends a ``protocol.Request`` and decodes its answer into the
message type the request names. Every failure becomes a ``ControlError`` whose message says
what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from agent.ops.protocol import A, ErrorAnswer, ProtocolError, Request, decode


class ControlError(Exception):
    """A control command failed; the message is for the operator."""


class NotRunning(ControlError):
    pass


class AdminClient:
    """Blocking JSON-over-HTTP calls on the admin unix socket."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self._timeout = timeout

    def call(self, request: Request[A]) -> A:
        """Send ``request``; its answer, or ControlError with the server's reason."""
        transport = httpx.HTTPTransport(uds=str(self.path))
        try:
            with httpx.Client(transport=transport, timeout=self._timeout) as client:
                response = client.request(
                    request.method, "http://gantryd" + request.url, content=request.body
                )
        except httpx.ConnectError as exc:
            raise self._connect_error(exc) from exc
        except httpx.HTTPError as exc:
            raise ControlError(f"gantryd did not answer on {self.path}: {exc}") from exc
        try:
            data = response.json()
        except ValueError as exc:
            raise ControlError(
                f"unexpected answer from {self.path}: {response.text[:200]}"
            ) from exc
        if response.status_code >= 400:
            try:
                reason = decode(ErrorAnswer, data).error
            except ProtocolError:
                reason = response.reason_phrase
            raise ControlError(reason)
        try:
            return decode(request.answer, data)
        except ProtocolError as exc:
            raise ControlError(
                f"unexpected answer from {self.path} ({exc}): is the running gantryd the same"
                f" version as this command? {json.dumps(data)[:200]}"
            ) from exc

    def _connect_error(self, exc: Exception) -> ControlError:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, PermissionError) or (
            self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            return ControlError(
                f"permission denied on {self.path}: run as root or as a member of gantryd's group"
            )
        if not self.path.exists():
            return NotRunning(f"the daemon is not running (no admin socket at {self.path})")
        return NotRunning(f"the daemon is not running (nobody answers on {self.path})")
