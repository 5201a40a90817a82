"""Webhook intake: the HTTP front door GitHub posts ``workflow_job`` deliveries to.

A delivery is answered 2xx only once what it says is committed to the queue (GitHub never
retries a failed delivery, docs/github.md §1.3), and always within ``server.response_deadline``.
The queue work runs as a task of the app's own nursery (opened by the ASGI lifespan) and the
request waits for it with that deadline: a commit stuck behind a locked database cannot hold
the answer (a write already inside a transaction is not abandoned, ``agent.db``). Past the
deadline the answer is 503 while the write carries on; if it then commits, GitHub's redelivery
or the reconciler's sweep of the same job is a no-op (delivery-id and job-id dedupe), so a job
is neither lost nor counted twice.

Every answer says why in a short plain-text body: 401 (signature), 400 (the bad field),
408 (body too slow), 413 (too large), 415 (content type), 503 (queue unavailable or not in
time), 2xx otherwise, including the reason an event was ignored. The order of checks never
lets an unsigned request reach the queue: size, signature, content type, payload.

Every delivery is counted by (event, action, outcome) for ``gantryd_webhooks_received_total``;
event and action come from unauthenticated input, so values other than GitHub's known ones
count as "other" and the label sets stay bounded.

The request path is kept lean (bench/intake.py, docs/benchmarks.md "Intake"): only the headers
used are decoded, the body is parsed once, the HMAC is OpenSSL's one-shot ``hmac.digest``, and
the per-delivery log lines are DEBUG (at 1,500 deliveries/s an INFO line each would be the
journal's biggest writer; the reconciler and errors still log at INFO and above).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from agent.container.events import JobEvent
from agent.orchestrator.intake_http import (
    FORM,
    INTERNAL_ERROR,
    JSON,
    NO_ACTION,
    NOT_IN_TIME,
    Answer,
    Disconnected,
    IntakeStats,
    Outcome,
    Receive,
    RejectionLog,
    Scope,
    Send,
    TooLarge,
    UnsupportedType,
    decode,
    read_body,
    respond,
    signature_valid,
)
from agent.orchestrator.job_parser import (
    NO_LABELS,
    Action,
    PayloadError,
    WorkflowJobEvent,
    job_spec,
    parse_workflow_job,
)
from agent.queue.base import EnqueueOutcome, JobQueue, JobSpec, QueueError
from agent.reload import LiveConfig
from agent.storage.errors import DiskFull

if TYPE_CHECKING:  # annotations only: importing the module would load cryptography
    from agent.github.auth import Secret

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when the dependency is usable, else what is wrong (shown by /readyz)."""

# The headers a delivery is read from; the others are never decoded.
_WANTED = {
    b"content-length": "content-length",
    b"content-type": "content-type",
    b"x-hub-signature-256": "x-hub-signature-256",
    b"x-github-event": "x-github-event",
    b"x-github-delivery": "x-github-delivery",
}


@dataclass
class _Pending:
    """The outcome of work handed to the app's nursery, for the request waiting on it."""

    done: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None
    error: Exception | None = None


Work = Callable[[], Awaitable[tuple[Answer, JobEvent | None]]]


def _nothing(repository: str, installation_id: int | None) -> None:
    pass


class WebhookApp:
    """The ASGI application serving the webhook path, /healthz and /readyz.

    ``readiness`` maps a name to a check run by /readyz (database writable, Docker answering,
    credentials loaded: the daemon supplies them). ``on_repository`` learns every repository
    that sent a job gantryd serves, for the reconciler's sweep.
    """

    def __init__(
        self,
        *,
        live: LiveConfig,
        queue: JobQueue,
        secrets: Callable[[], tuple[Secret, ...]],
        job_events: trio.MemorySendChannel[JobEvent],
        on_enqueue: Callable[[], None],
        readiness: Mapping[str, ReadinessCheck] | None = None,
        on_repository: Callable[[str, int | None], None] = _nothing,
    ) -> None:
        self._live = live
        self._queue = queue
        self._secrets = secrets
        self._job_events = job_events
        self._on_enqueue = on_enqueue
        self._readiness = dict(readiness or {})
        self._on_repository = on_repository
        self._nursery: trio.Nursery | None = None
        self.stats = IntakeStats()
        self._rejections = RejectionLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = trio.current_time()
        try:
            answer = await self._route(scope, receive, started)
        except Exception:
            log.exception("intake: %s %s failed", scope.get("method"), scope.get("path"))
            answer = INTERNAL_ERROR
        self.stats.answers[answer.status] += 1
        await respond(send, answer)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Own the nursery of queue work for as long as the server runs; hypercorn shuts the
        listeners first, so work still running at shutdown is waited for, not dropped."""
        async with trio.open_nursery() as nursery:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._nursery = nursery
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self._nursery = None
                    break
        await send({"type": "lifespan.shutdown.complete"})

    async def _route(self, scope: Scope, receive: Receive, started: float) -> Answer:
        path, method = scope["path"], scope["method"]
        server = self._live.current.server
        if path == server.webhook_path and method == "POST":
            headers: dict[str, str] = {}
            for name, value in scope["headers"]:  # hypercorn gives names in lower case
                wanted = _WANTED.get(name)
                if wanted is not None:
                    headers[wanted] = value.decode("latin-1")
            event = headers.get("x-github-event", "")
            try:
                answer, action = await self._webhook(headers, receive, started)
            except Exception:
                self.stats.count(event, NO_ACTION, Outcome.ERROR)
                raise
            self.stats.count(event, action, answer.outcome)
            return answer
        if path == "/healthz" and method == "GET":
            return Answer(200, "ok", Outcome.ACCEPTED)
        if path == "/readyz" and method == "GET":
            return await self._ready(server.response_deadline)
        if path != server.webhook_path:
            return Answer(
                404, f"not found; GitHub should post to {server.webhook_path}", Outcome.INVALID
            )
        return Answer(405, "method not allowed; use POST", Outcome.INVALID)

    async def _webhook(
        self, headers: dict[str, str], receive: Receive, started: float
    ) -> tuple[Answer, str]:
        """A delivery: its answer, and its action once the payload was read."""
        server = self._live.current.server
        limit = server.max_body
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _too_large(limit), NO_ACTION
        body: bytes | None = None
        with trio.move_on_after(server.read_timeout):
            try:
                body = await read_body(receive, limit)
            except TooLarge:
                return _too_large(limit), NO_ACTION
            except Disconnected:
                text = "client disconnected before sending the whole body"
                return Answer(400, text, Outcome.INVALID), NO_ACTION
        if body is None:
            text = f"body not received within server.read_timeout ({server.read_timeout:g}s)"
            return Answer(408, text, Outcome.INVALID), NO_ACTION
        return await self._delivery(headers, body, started + server.response_deadline)

    async def _ready(self, deadline: float) -> Answer:
        problems: dict[str, str] = {}

        async def probe(name: str, check: ReadinessCheck) -> None:
            try:
                problem = await check()
            except Exception as exc:  # a probe failing in any way means "not ready"
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                problems[name] = problem

        with trio.move_on_after(deadline) as scope:
            async with trio.open_nursery() as nursery:
                for name, check in self._readiness.items():
                    nursery.start_soon(probe, name, check)
        if scope.cancelled_caught:
            for name in self._readiness:
                problems.setdefault(name, f"no answer within {deadline:g}s")
        if problems:
            text = "not ready: " + "; ".join(f"{k}: {v}" for k, v in problems.items())
            return Answer(503, text, Outcome.UNAVAILABLE)
        text = "ready: " + ", ".join(self._readiness) if self._readiness else "ready"
        return Answer(200, text, Outcome.ACCEPTED)

    async def _delivery(
        self, headers: dict[str, str], body: bytes, deadline: float
    ) -> tuple[Answer, str]:
        if not signature_valid(body, headers.get("x-hub-signature-256"), self._secrets()):
            count = self._rejections.note(trio.current_time())
            if count is not None:
                log.warning(
                    "webhook rejected %d request(s) with a missing or wrong X-Hub-Signature-256"
                    " (logged at most every %gs; all counted in gantryd_webhooks_received_total)",
                    count,
                    self._rejections.interval,
                )
            answer = Answer(401, "missing or invalid X-Hub-Signature-256", Outcome.REJECTED)
            return answer, NO_ACTION
        event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery") or None
        try:
            payload = decode(body, headers.get("content-type", ""))
        except UnsupportedType as exc:
            text = f"unsupported content type {exc}; use {JSON} or {FORM}"
            return Answer(415, text, Outcome.INVALID), NO_ACTION
        except PayloadError as exc:
            return Answer(400, str(exc), Outcome.INVALID), NO_ACTION
        except ValueError as exc:
            return Answer(400, f"malformed body: {exc}", Outcome.INVALID), NO_ACTION
        action = payload.get("action") if isinstance(payload, dict) else None
        action = action if isinstance(action, str) else NO_ACTION
        if event == "ping":
            return await self._committed(deadline, self._ping(delivery)), action
        if event != "workflow_job":
            self.stats.ignored["event"] += 1
            text = f"ignored: event {event or '(none)'} is not workflow_job"
            return Answer(202, text, Outcome.IGNORED), action
        try:
            job = parse_workflow_job(payload)
        except PayloadError as exc:
            return Answer(400, str(exc), Outcome.INVALID), action
        return await self._committed(deadline, self._workflow_job(job, delivery)), action

    async def _committed(self, deadline: float, work: Work) -> Answer:
        """Run ``work`` in the app's nursery; its answer if it comes by ``deadline``, else 503.

        The job event (for the pool manager) is sent after the answer is known, so a slow
        consumer never delays GitHub's 2xx.
        """
        pending = _Pending()

        async def run() -> None:
            try:
                answer, event = await work()
            except QueueError as exc:
                log.error("queue could not commit: %s", exc)
                reason = f": {exc}" if isinstance(exc, DiskFull) else ""
                pending.answer = Answer(
                    503,
                    f"queue unavailable{reason}; the reconciler will recover it",
                    Outcome.UNAVAILABLE,
                )
                pending.done.set()
                return
            except Exception as exc:
                pending.error = exc
                pending.done.set()
                return
            pending.answer = answer
            pending.done.set()
            if event is not None:
                await self._job_events.send(event)

        if self._nursery is None:  # served without the lifespan protocol: work inline
            await run()
        else:
            self._nursery.start_soon(run)
            with trio.move_on_at(deadline):
                await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.answer or NOT_IN_TIME

    def _ping(self, delivery: str | None) -> Work:
        async def work() -> tuple[Answer, JobEvent | None]:
            if delivery:
                await self._queue.record_delivery(delivery)
            return Answer(200, "pong", Outcome.ACCEPTED), None

        return work

    def _ignore(self, job: WorkflowJobEvent) -> None:
        """Count a job no pool serves; one with no labels is also logged with the reason (a
        person meant it for a runner group and would otherwise see it wait without a word)."""
        reason = _no_pool_reason(job)
        self.stats.ignored[reason] += 1
        if reason == "no_labels" and job.action is Action.QUEUED:
            log.info("job %s of %s not served: %s", job.job_id, job.repository, NO_LABELS)

    def _workflow_job(self, job: WorkflowJobEvent, delivery: str | None) -> Work:
        async def work() -> tuple[Answer, JobEvent | None]:
            spec = job_spec(job, self._live.current)
            if spec is not None:
                self._on_repository(job.repository, job.installation_id)
            queued = job.action is Action.QUEUED or _queued_in_progress(job)
            if job.action is Action.WAITING or (queued and not job.ready):
                if spec is None:
                    self._ignore(job)
                    return _no_pool(job), None
                return await self._hold(job, spec, delivery)
            if queued:
                if spec is None:
                    self._ignore(job)
                    return _no_pool(job), None
                outcome = await self._queue.enqueue(spec, delivery_id=delivery)
                log.debug(
                    "webhook queued job=%s repository=%s pool=%s priority=%s outcome=%s",
                    job.job_id,
                    job.repository,
                    spec.pool,
                    spec.priority,
                    outcome.value,
                )
                if outcome is EnqueueOutcome.CREATED:
                    self._on_enqueue()
                    text = f"queued job {job.job_id} for pool {spec.pool}"
                    return Answer(201, text, Outcome.ENQUEUED), None
                self.stats.ignored[outcome.value] += 1
                text = f"job {job.job_id}: {outcome.value}, nothing to do"
                return Answer(200, text, Outcome.DUPLICATE), None
            if spec is None and await self._queue.get(job.job_id) is None:
                self._ignore(job)
                return _no_pool(job), None
            if job.action is Action.IN_PROGRESS:
                return await self._in_progress(job, delivery)
            return await self._completed(job, delivery)

        return work

    async def _hold(
        self, job: WorkflowJobEvent, spec: JobSpec, delivery: str | None
    ) -> tuple[Answer, JobEvent | None]:
        """A job waiting for an environment's reviewers: kept HELD in the queue (so a restart
        still knows it, and its check run says so), never provisioned until the ``queued``
        with status ``queued`` that follows an approval; a rejection completes it."""
        outcome = await self._queue.enqueue(spec, delivery_id=delivery, held=True)
        log.debug("webhook held job=%s pool=%s outcome=%s", job.job_id, spec.pool, outcome.value)
        if outcome is EnqueueOutcome.CREATED:
            text = f"job {job.job_id} waits for approval; held for pool {spec.pool}"
            return Answer(202, text, Outcome.ENQUEUED), None
        self.stats.ignored[outcome.value] += 1
        return Answer(
            200, f"job {job.job_id}: {outcome.value}, nothing to do", Outcome.DUPLICATE
        ), None

    async def _in_progress(
        self, job: WorkflowJobEvent, delivery: str | None
    ) -> tuple[Answer, JobEvent | None]:
        event = JobEvent(job_id=job.job_id, action="in_progress", runner_name=job.runner_name)
        if await self._queue.get(job.job_id) is None:
            # Started before its queued delivery arrived (or that one was lost): a runner has
            # it, so it must never be provisioned; a DONE tombstone makes a late queued a no-op.
            await self._queue.finish(
                job.job_id, "started before gantryd saw it queued", delivery_id=delivery
            )
            text = f"job {job.job_id} already running; not provisioned"
            return Answer(200, text, Outcome.ACCEPTED), event
        changed = await self._queue.mark_running(
            job.job_id, job.runner_name or "", delivery_id=delivery
        )
        log.debug("webhook in_progress job=%s runner=%s", job.job_id, job.runner_name)
        return _changed(changed, f"job {job.job_id} running"), event

    async def _completed(
        self, job: WorkflowJobEvent, delivery: str | None
    ) -> tuple[Answer, JobEvent | None]:
        changed = await self._queue.finish(
            job.job_id, job.conclusion or "unknown", delivery_id=delivery
        )
        log.debug("webhook completed job=%s conclusion=%s", job.job_id, job.conclusion)
        self._on_enqueue()
        event = JobEvent(
            job_id=job.job_id,
            action="completed",
            runner_name=job.runner_name,
            conclusion=job.conclusion,
        )
        return _changed(changed, f"job {job.job_id} done"), event


def _too_large(limit: int) -> Answer:
    return Answer(413, f"body larger than server.max_body ({limit} bytes)", Outcome.INVALID)


def _queued_in_progress(job: WorkflowJobEvent) -> bool:
    """An ``in_progress`` whose job is still ``queued`` with no runner (octokit's schema
    allows it): no runner has the job, so it is read as a ``queued``, never as started."""
    return job.action is Action.IN_PROGRESS and job.status == "queued" and not job.runner_name


def _no_pool(job: WorkflowJobEvent) -> Answer:
    if not job.labels:
        return Answer(200, f"ignored: {NO_LABELS}", Outcome.IGNORED)
    return Answer(200, f"ignored: no pool has labels {list(job.labels)}", Outcome.IGNORED)


def _no_pool_reason(job: WorkflowJobEvent) -> str:
    """The ``gantryd_webhooks_ignored`` reason of a job no pool serves."""
    return "no_labels" if not job.labels else "no_pool"


def _changed(changed: bool, text: str) -> Answer:
    if changed:
        return Answer(200, text, Outcome.UPDATED)
    return Answer(200, "nothing to do", Outcome.DUPLICATE)
