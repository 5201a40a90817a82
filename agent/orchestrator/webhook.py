"""Webhook intake: the HTTP front door GitHub posts ``workflow_job`` deliveries to.

A delivery is answered 2xx only once what it says is committed to the queue (GitHub never
retries a failed delivery, reference §1.3), and always within ``server.response_deadline``:
if the queue cannot commit in time the answer is 503 and the reconciler recovers the job later.

Every answer says why in a short plain-text body: 401 (signature), 400 (the bad field),
413 (too large), 415 (content type), 503 (queue unavailable), 200/201/202 otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import trio

from agent.container.pool_manager import JobEvent
from agent.github.auth import Secret
from agent.orchestrator.job_parser import Action, PayloadError, job_spec, parse_workflow_job
from agent.queue.base import EnqueueOutcome, JobQueue, QueueError
from agent.reload import LiveConfig

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def signature_valid(body: bytes, header: str | None, secrets: Iterable[Secret]) -> bool:
    """Constant-time check of X-Hub-Signature-256 against each configured secret."""
    if not header or not header.startswith("sha256="):
        return False
    given = header.encode("ascii", "replace")
    ok = False
    for secret in secrets:
        digest = hmac.new(secret.reveal().encode(), body, hashlib.sha256).hexdigest()
        ok |= hmac.compare_digest(given, b"sha256=" + digest.encode("ascii"))
    return ok


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, answer: Answer) -> None:
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


def _decode(body: bytes, content_type: str) -> Any:
    """JSON or form-encoded (``payload=``) bodies, as GitHub may send either."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return json.loads(body)
    if media == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
        if "payload" not in fields:
            raise PayloadError("payload", "(form field) is missing")
        return json.loads(fields["payload"][0])
    raise _UnsupportedType(media or "(none)")


class _UnsupportedType(Exception):
    pass


class WebhookApp:
    """The ASGI application serving /webhook, /healthz and /readyz."""

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        secrets: Callable[[], tuple[Secret, ...]],
        job_events: trio.MemorySendChannel[JobEvent],
        on_enqueue: Callable[[], None],
    ) -> None:
        self._live = live
        self._queue = queue
        self._secrets = secrets
        self._job_events = job_events
        self._on_enqueue = on_enqueue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        server = self._live.current.server
        if path in ("/healthz", "/readyz") and method == "GET":
            await _respond(send, Answer(200, "ok"))
        elif path != server.webhook_path:
            await _respond(
                send, Answer(404, f"not found; GitHub should post to {server.webhook_path}")
            )
        elif method != "POST":
            await _respond(send, Answer(405, "method not allowed; use POST"))
        else:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            answer = Answer(
                503,
                "queue did not commit in time; GitHub will not retry, "
                "the reconciler will find the job",
            )
            with trio.move_on_after(server.response_deadline):
                answer = await self._delivery(headers, receive, server.max_body)
            await _respond(send, answer)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _delivery(self, headers: dict[str, str], receive: Receive, limit: int) -> Answer:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return Answer(413, f"body larger than server.max_body ({limit} bytes)")
        try:
            body = await _read_body(receive, limit)
        except _TooLarge:
            return Answer(413, f"body larger than server.max_body ({limit} bytes)")
        except _Disconnected:
            return Answer(400, "client disconnected before sending the whole body")
        if not signature_valid(body, headers.get("x-hub-signature-256"), self._secrets()):
            log.warning("webhook rejected: missing or wrong X-Hub-Signature-256")
            return Answer(401, "missing or invalid X-Hub-Signature-256")
        event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery") or None
        try:
            payload = _decode(body, headers.get("content-type", ""))
        except _UnsupportedType as exc:
            return Answer(415, f"unsupported content type {exc}; use application/json")
        except (ValueError, PayloadError) as exc:
            return Answer(400, f"malformed body: {exc}")
        try:
            return await self._dispatch(event, delivery, payload)
        except PayloadError as exc:
            return Answer(400, str(exc))
        except QueueError as exc:
            log.error("queue could not commit delivery=%s: %s", delivery, exc)
            return Answer(503, "queue unavailable; the reconciler will recover the job")

    async def _dispatch(self, event: str, delivery: str | None, payload: Any) -> Answer:
        if event == "ping":
            if delivery:
                await self._queue.record_delivery(delivery)
            return Answer(200, "pong")
        if event != "workflow_job":
            return Answer(202, f"ignored: event {event or '(none)'} is not workflow_job")
        job = parse_workflow_job(payload)
        config = self._live.current
        spec = job_spec(job, config)
        if spec is None:
            if delivery:
                await self._queue.record_delivery(delivery)
            return Answer(200, f"ignored: no pool has labels {list(job.labels)}")
        where = f"job={job.job_id} repository={job.repository} pool={spec.pool}"
        if job.action is Action.QUEUED:
            outcome = await self._queue.enqueue(spec, delivery_id=delivery)
            log.info("webhook queued %s priority=%s outcome=%s", where, spec.priority, outcome)
            if outcome is EnqueueOutcome.CREATED:
                self._on_enqueue()
                return Answer(201, f"queued job {job.job_id} for pool {spec.pool}")
            return Answer(200, f"job {job.job_id}: {outcome.value}, nothing to do")
        if job.action is Action.WAITING:
            if delivery:
                await self._queue.record_delivery(delivery)
            return Answer(200, f"job {job.job_id} waits for approval; not provisioned")
        if job.action is Action.IN_PROGRESS:
            changed = await self._queue.mark_running(
                job.job_id, job.runner_name or "", delivery_id=delivery
            )
            log.info("webhook in_progress %s runner=%s", where, job.runner_name)
            await self._job_events.send(
                JobEvent(job_id=job.job_id, action="in_progress", runner_name=job.runner_name)
            )
            return Answer(200, f"job {job.job_id} running" if changed else "nothing to do")
        changed = await self._queue.finish(
            job.job_id, job.conclusion or "unknown", delivery_id=delivery
        )
        log.info("webhook completed %s conclusion=%s", where, job.conclusion)
        await self._job_events.send(
            JobEvent(
                job_id=job.job_id,
                action="completed",
                runner_name=job.runner_name,
                conclusion=job.conclusion,
            )
        )
        self._on_enqueue()
        return Answer(200, f"job {job.job_id} done" if changed else "nothing to do")
