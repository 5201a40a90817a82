"""Check runs and commit statuses as GitHub keeps them, with GitHub's rules (routes: checks_rest).

    POST  /repos/{o}/{r}/check-runs                        -> 201 check run   (checks: write)
    PATCH /repos/{o}/{r}/check-runs/{id}                   -> 200 check run   (checks: write)
    GET   /repos/{o}/{r}/commits/{ref}/check-runs[?check_name=] -> 200 list  (checks: read)
    POST  /repos/{o}/{r}/statuses/{sha}                    -> 201 status      (statuses: write)
    GET   /repos/{o}/{r}/commits/{ref}/status              -> 200 combined    (statuses: read)
    POST  /repos/{o}/{r}/actions/runs/{run_id}/cancel      -> 202 | 409       (actions: write)

Rules, from docs/github.md: §6.1 check runs — ``name`` and ``head_sha`` required on
create; ``status`` one of queued/in_progress/completed (waiting/requested/pending are reserved
for Actions); ``conclusion`` from the documented set (``stale`` only GitHub sets) and required
when ``status`` is completed or ``completed_at`` is given; a conclusion alone sets the status to
completed; ``output`` needs ``title`` and ``summary``, ``summary`` and ``text`` at most 65535
characters, at most 50 annotations per request; timestamps ``YYYY-MM-DDTHH:MM:SSZ``. Check runs
are for GitHub Apps only (§5.4: "To create a check run, you must use a GitHub App"), so a
personal access token is refused. §6.2 statuses — ``state`` one of error/failure/pending/success,
``context`` case-insensitive (default "default") and at most 255 characters, ``description`` at
most 140, at most 1000 statuses per sha and context. A commit's status *is* the latest status of
each (sha, context): a second status with the same context replaces the first in the combined
view (its history stays, counted against the 1000), one with another context stands beside it.
§4 cancel — 202 Accepted, 409 when the run cannot be cancelled (already completed).

Any 422 leaves the state unchanged. Not emulated: whether ``head_sha`` names a real commit, and
cancelling a job that is already on a runner (only its queued jobs are cancelled).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from agent.emulator import errors
from agent.emulator.errors import GitHubError
from agent.emulator.models import iso8601

CHECK_STATUSES = frozenset({"queued", "in_progress", "completed"})
ACTIONS_ONLY_STATUSES = frozenset({"waiting", "requested", "pending"})
CONCLUSIONS = frozenset(
    {"action_required", "cancelled", "failure", "neutral", "success", "skipped", "timed_out"}
)
STATUS_STATES = frozenset({"error", "failure", "pending", "success"})
MAX_OUTPUT = 65535  # characters of output.summary and output.text (§6.1)
MAX_ANNOTATIONS = 50  # per request (§6.1)
MAX_STATUSES = 1000  # per sha and context (§6.2)
MAX_CONTEXT = 255  # characters of a status context [U: observed, §6.2]
MAX_DESCRIPTION = 140  # characters of a status description [U: observed, §6.2]
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


@dataclass(kw_only=True)
class CheckRun:
    id: int
    repository: str  # "owner/name" as GitHub spells it
    head_sha: str
    name: str
    external_id: str = ""
    details_url: str | None = None
    status: str = "queued"
    conclusion: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)  # status after each create/update


@dataclass(frozen=True, kw_only=True)
class CommitStatus:
    id: int
    repository: str
    sha: str
    context: str
    state: str
    description: str | None
    target_url: str | None
    created_at: float


def _invalid(detail: str, docs: str) -> GitHubError:
    return GitHubError(422, f"Invalid request.\n\n{detail}", documentation_url=docs)


def _too_long(field_name: str, limit: int, docs: str) -> GitHubError:
    """GitHub's answer to a status field over its length (observed, docs/github.md §6.2)."""
    return GitHubError(
        422,
        "Validation Failed",
        documentation_url=docs,
        errors=[
            {
                "resource": "Status",
                "code": "custom",
                "field": field_name,
                "message": f"{field_name} is too long (maximum is {limit} characters)",
            }
        ],
    )


def combined_state(statuses: list[CommitStatus]) -> str:
    """GitHub's combined state: "failure if any of the contexts report as error or failure;
    pending if there are no statuses or a context is pending; success if the latest status for
    all contexts is success" (REST docs, "Get the combined status for a specific reference")."""
    states = {s.state for s in statuses}
    if states & {"error", "failure"}:
        return "failure"
    if not states or "pending" in states:
        return "pending"
    return "success"


def _string(body: Mapping[str, Any], key: str, docs: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"For 'properties/{key}', {value!r} is not a string.", docs)
    return value


class Checks:
    """Check runs and statuses of every repository; waiters wake on each change."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._ids = itertools.count(20_000_000_001)
        self._status_ids = itertools.count(30_000_000_001)
        self.runs: dict[int, CheckRun] = {}
        self.statuses: list[CommitStatus] = []  # every status created, oldest first
        # The latest status of each (repository, sha, context), all three casefolded.
        self._latest: dict[tuple[str, str, str], CommitStatus] = {}
        self.cancelled_runs: list[int] = []
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; the caller bounds the wait."""
        while not condition():
            await self._changed.wait()

    def runs_of(self, repository: str, *, head_sha: str | None = None) -> list[CheckRun]:
        key = repository.lower()
        return [
            run
            for run in self.runs.values()
            if run.repository.lower() == key and (head_sha is None or run.head_sha == head_sha)
        ]

    def statuses_of(self, repository: str, sha: str) -> list[CommitStatus]:
        """Every status created for the commit, oldest first (its history)."""
        key = repository.lower()
        return [s for s in self.statuses if s.repository.lower() == key and s.sha == sha]

    def latest_statuses(self, repository: str, sha: str) -> list[CommitStatus]:
        """The commit's status per context (the combined view), newest first."""
        key = (repository.lower(), sha.lower())
        found = [s for (repo, ref, _), s in self._latest.items() if (repo, ref) == key]
        return sorted(found, key=lambda s: s.id, reverse=True)

    # -- check runs (§6.1) ----------------------------------------------------------------

    def create_run(self, repository: str, body: object, docs: str) -> CheckRun:
        if not isinstance(body, dict):
            raise _invalid(f"{body!r} is not an object.", docs)
        for key in ("name", "head_sha"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise _invalid(f'"{key}" wasn\'t supplied.', docs)
        run = CheckRun(id=0, repository=repository, head_sha=body["head_sha"], name=body["name"])
        self._apply(run, body, docs)  # validates everything before anything is stored
        run.id = next(self._ids)
        self.runs[run.id] = run
        self._notify()
        return run

    def update_run(self, repository: str, check_run_id: int, body: object, docs: str) -> CheckRun:
        run = self.runs.get(check_run_id)
        if run is None or run.repository.lower() != repository.lower():
            raise errors.not_found(docs)
        if not isinstance(body, dict):
            raise _invalid(f"{body!r} is not an object.", docs)
        self._apply(run, body, docs)
        self._notify()
        return run

    def _apply(self, run: CheckRun, body: Mapping[str, Any], docs: str) -> None:
        """Validate ``body`` against §6.1, then apply it to ``run`` (nothing on a 422)."""
        name = _string(body, "name", docs)
        status = _string(body, "status", docs)
        conclusion = _string(body, "conclusion", docs)
        details_url = _string(body, "details_url", docs)
        external_id = _string(body, "external_id", docs)
        started_at = _string(body, "started_at", docs)
        completed_at = _string(body, "completed_at", docs)
        if status is not None and status not in CHECK_STATUSES:
            if status in ACTIONS_ONLY_STATUSES:
                raise _invalid(f"Only GitHub Actions can set a status of {status}.", docs)
            raise _invalid(f"For 'properties/status', {status!r} is not a valid status.", docs)
        if conclusion is not None and conclusion not in CONCLUSIONS:
            raise _invalid(
                f"For 'properties/conclusion', {conclusion!r} is not a valid conclusion.", docs
            )
        if conclusion is not None:
            status = "completed"  # "Providing conclusion will automatically set the status"
        if (status == "completed" or completed_at is not None) and conclusion is None:
            raise _invalid(
                "Conclusion must be provided when status is completed or completed_at is set.",
                docs,
            )
        for key, stamp in (("started_at", started_at), ("completed_at", completed_at)):
            if stamp is not None and not _TIMESTAMP.fullmatch(stamp):
                raise _invalid(f"For 'properties/{key}', {stamp!r} is not a timestamp.", docs)
        output = body.get("output")
        if output is not None:
            self._check_output(output, docs)
        run.name = name or run.name
        run.status = status or run.status
        if status is not None:
            run.conclusion = conclusion  # None unless completed (checked above)
        run.details_url = details_url if details_url is not None else run.details_url
        run.external_id = external_id if external_id is not None else run.external_id
        run.started_at = started_at or run.started_at
        if run.status == "completed":
            run.completed_at = completed_at or run.completed_at or iso8601(self._clock())
        if output is not None:
            run.output = {k: output[k] for k in ("title", "summary", "text") if k in output}
        run.writes.append(run.status)

    @staticmethod
    def _check_output(output: object, docs: str) -> None:
        if not isinstance(output, dict):
            raise _invalid(f"For 'properties/output', {output!r} is not an object.", docs)
        for key in ("title", "summary"):
            if not isinstance(output.get(key), str):
                raise _invalid(f'"{key}" wasn\'t supplied.', docs)
        for key in ("summary", "text"):
            value = output.get(key)
            if value is not None and not isinstance(value, str):
                raise _invalid(f"For 'properties/{key}', {value!r} is not a string.", docs)
            if isinstance(value, str) and len(value) > MAX_OUTPUT:
                raise _invalid(
                    f"For 'properties/{key}', it is longer than {MAX_OUTPUT} characters.", docs
                )
        annotations = output.get("annotations", [])
        if not isinstance(annotations, list) or len(annotations) > MAX_ANNOTATIONS:
            raise _invalid(f"At most {MAX_ANNOTATIONS} annotations per request.", docs)

    # -- statuses (§6.2) ------------------------------------------------------------------

    def add_status(self, repository: str, sha: str, body: object, docs: str) -> CommitStatus:
        if not isinstance(body, dict):
            raise _invalid(f"{body!r} is not an object.", docs)
        state = body.get("state")
        if state is None:
            raise _invalid('"state" wasn\'t supplied.', docs)
        if state not in STATUS_STATES:
            raise _invalid(f"For 'properties/state', {state!r} is not a valid state.", docs)
        context = _string(body, "context", docs) or "default"
        description = _string(body, "description", docs)
        for field_name, value, limit in (
            ("context", context, MAX_CONTEXT),
            ("description", description, MAX_DESCRIPTION),
        ):
            if value is not None and len(value) > limit:
                raise _too_long(field_name, limit, docs)
        same = [
            s
            for s in self.statuses_of(repository, sha)
            if s.context.lower() == context.lower()  # "This field is case-insensitive"
        ]
        if len(same) >= MAX_STATUSES:
            raise GitHubError(
                422,
                "Validation Failed: This SHA and context has reached the maximum number of "
                "statuses.",
                documentation_url=docs,
            )
        status = CommitStatus(
            id=next(self._status_ids),
            repository=repository,
            sha=sha,
            context=context,
            state=str(state),
            description=description,
            target_url=_string(body, "target_url", docs),
            created_at=self._clock(),
        )
        self.statuses.append(status)
        self._latest[(repository.lower(), sha.lower(), context.lower())] = status
        self._notify()
        return status

    def note_cancelled(self, run_id: int) -> None:
        self.cancelled_runs.append(run_id)
        self._notify()


def check_run_json(run: CheckRun, api_url: str) -> dict[str, Any]:
    """Schema "CheckRun" (§6.1), the fields gantryd and tests read."""
    return {
        "id": run.id,
        "head_sha": run.head_sha,
        "external_id": run.external_id,
        "url": f"{api_url}/repos/{run.repository}/check-runs/{run.id}",
        "html_url": f"{api_url}/{run.repository}/runs/{run.id}",
        "details_url": run.details_url,
        "status": run.status,
        "conclusion": run.conclusion,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "name": run.name,
        "output": {
            "title": run.output.get("title"),
            "summary": run.output.get("summary"),
            "text": run.output.get("text"),
            "annotations_count": 0,
        },
    }


def status_json(status: CommitStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "state": status.state,
        "description": status.description,
        "target_url": status.target_url,
        "context": status.context,
        "created_at": iso8601(status.created_at),
        "updated_at": iso8601(status.created_at),
    }
