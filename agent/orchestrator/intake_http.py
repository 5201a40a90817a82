"""The HTTP side of intake: ASGI types, answers and their outcomes, the counters behind the
intake metrics, body reading, signature checking and payload decoding.

Kept apart from `agent.orchestrator.webhook`, which decides what a delivery means for the queue.
"""

from __future__ import annotations

import collections
import enum
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from agent.orchestrator.job_parser import Action, PayloadError

if TYPE_CHECKING:  # annotations only: importing the module would load cryptography
    from agent.github.auth import Secret

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
EVENTS = frozenset({"workflow_job", "ping"})  # what intake handles; any other event is "other"
ACTIONS = frozenset(action.value for action in Action)
NO_ACTION = "none"  # ping, and deliveries refused before their payload was read
OTHER = "other"


class Outcome(enum.StrEnum):
    """What a delivery led to (the ``outcome`` label of ``gantryd_webhooks_received_total``)."""

    ENQUEUED = "enqueued"  # a queued job (or one held for approval) was committed to the queue
    UPDATED = "updated"  # a known job's state changed (in_progress, completed)
    ACCEPTED = "accepted"  # a ping, or an event for a job no pool serves being tombstoned
    DUPLICATE = "duplicate"  # delivery id or job already known: nothing changed
    IGNORED = "ignored"  # not for gantryd: another event, no pool, nothing to do
    REJECTED = "rejected"  # 401: missing or wrong signature
    INVALID = "invalid"  # 400, 408, 413, 415: the request itself was wrong
    UNAVAILABLE = "unavailable"  # 503: the queue could not commit (in time)
    ERROR = "error"  # 500: a bug


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    outcome: Outcome


NOT_IN_TIME = Answer(
    503,
    "queue did not commit in time; GitHub will not retry, the reconciler will find the job",
    Outcome.UNAVAILABLE,
)
INTERNAL_ERROR = Answer(500, "internal error", Outcome.ERROR)


@dataclass
class IntakeStats:
    """Counters for metrics: answers by status, ignored deliveries by reason, and deliveries
    by (event, action, outcome)."""

    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    ignored: collections.Counter[str] = field(default_factory=collections.Counter)
    received: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)

    def count(self, event: str, action: str, outcome: Outcome) -> None:
        """Count one delivery; unknown event and action names become "other"."""
        self.received[
            (
                event if event in EVENTS else OTHER,
                action if action in ACTIONS or action == NO_ACTION else OTHER,
                outcome.value,
            )
        ] += 1


REJECTION_LOG_INTERVAL = 60.0  # seconds; at most one WARNING line per interval for 401s


@dataclass
class RejectionLog:
    """Says when to log unsigned or wrongly signed requests, and how many there were.

    One WARNING per rejected request let a 20 s flood write 6,865 lines and slow signed
    deliveries 4.8x; every rejection is still counted in
    ``gantryd_webhooks_received_total{outcome="rejected"}``.
    """

    interval: float = REJECTION_LOG_INTERVAL
    _pending: int = field(default=0, init=False)
    _next_at: float = field(default=float("-inf"), init=False)

    def note(self, now: float) -> int | None:
        """Count one rejection at ``now``; the count to log (this one and those held back
        since the last line) once ``interval`` has passed since it, else None."""
        self._pending += 1
        if now < self._next_at:
            return None
        count, self._pending = self._pending, 0
        self._next_at = now + self.interval
        return count


class TooLarge(Exception):
    """The body passed ``server.max_body``."""


class Disconnected(Exception):
    """The client went away before the body was read."""


class UnsupportedType(Exception):
    """A content type GitHub never sends (it sends JSON or form-encoded)."""


def signature_valid(body: bytes, header: str | None, secrets: Iterable[Secret]) -> bool:
    """Constant-time check of X-Hub-Signature-256 against every configured secret (rotation)."""
    if not header or not header.startswith("sha256="):
        return False
    given = header[7:].encode("ascii", "replace")
    ok = False
    for secret in secrets:
        digest = hmac.digest(secret.reveal().encode(), body, "sha256").hex().encode("ascii")
        ok |= hmac.compare_digest(given, digest)
    return ok


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the usual case: the whole body in one message, no copy
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


async def respond(send: Send, answer: Answer) -> None:
    body = (answer.text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def decode(body: bytes, content_type: str) -> Any:
    """JSON or form-encoded (``payload=``) bodies: GitHub may send either (docs/github.md §1.1)."""
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        if media == JSON:
            return json.loads(body)
        if media == FORM:
            fields = parse_qs(body.decode("utf-8"))
            if "payload" not in fields:
                raise PayloadError("payload", "(form field) is missing")
            return json.loads(fields["payload"][0])
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    raise UnsupportedType(media or "(none)")
