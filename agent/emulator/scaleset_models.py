"""Records, settings and errors of the emulated Actions service (`agent.emulator.scalesets`).

Plain mutable dataclasses owned by `ActionsService`; only it changes them. The errors render
the .NET service's error body; status codes, ``typeName`` values and messages name their
source, or say (guess).
"""

from __future__ import annotations

import base64
import enum
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.emulator.errors import GitHubError
from agent.emulator.models import Job, RunnerGroup, RunnerScope

REGISTRATION_TOKEN_LIFETIME = 3600.0  # "The token expires after one hour" (GitHub REST docs)
MAX_BATCH = 50  # job messages per queue message (docs/scale-set.md, ARC listener)
MAX_REQUEUES = 3  # offers after the first before a never-acquired job is cancelled
MESSAGE_TYPE = "RunnerScaleSetJobMessages"
BOM = b"\xef\xbb\xbf"
_RUNTIME = "GitHub.Actions.Runtime.WebApi"
DISTRIBUTED_TASK = "GitHub.DistributedTask.WebApi"  # (guess) the namespace of Agent*Exception


@dataclass(kw_only=True)
class ActionsSettings:
    """What a test may shorten; defaults are GitHub's where known (see the module docstring)."""

    poll_timeout: float = 50.0  # seconds a message long-poll is held before 202 (docs, ARC)
    session_idle: float = 90.0  # seconds without a poll or refresh before a session is gone
    acquire_timeout: float = 120.0  # seconds a delivered JobAvailable waits for acquire (guess)
    admin_token_lifetime: float = 3600.0  # (guess)
    queue_token_lifetime: float = 3600.0  # (guess)
    # UTF-8 BOM before JSON bodies of the Actions service. The runner-registration answer always
    # has one (GARM trims it there only: util/github/scalesets/token.go); on github.com's broker
    # the other answers have none (GARM decodes them untrimmed), on older services they did
    # (actions/scaleset trims every answer: common_client.go `sendRequest`).
    bom_bodies: bool = True


class ActionsError(GitHubError):
    """An Actions-service error: ``{typeName, message, ...}`` as the .NET service renders it."""

    def __init__(
        self, status: int, type_name: str, message: str, *, namespace: str | None = _RUNTIME
    ) -> None:
        super().__init__(status, message)
        self.type_key = type_name
        self.type_name = f"{namespace}.{type_name}, {namespace}" if namespace else type_name

    def body(self) -> dict[str, Any]:
        # The VSS "WrappedException" shape; clients read typeName and message (errors.go).
        return {
            "$id": "1",
            "innerException": None,
            "message": self.message,
            "typeName": self.type_name,
            "typeKey": self.type_key,
            "errorCode": 0,
            "eventId": 3000,
        }


def unauthorized() -> GitHubError:
    """An unknown or expired admin or message-queue token (actions/scaleset: 401 = expired)."""
    return GitHubError(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})


def scale_set_not_found(identifier: object) -> ActionsError:
    # Message as GitHub sends it (a public listener log: "No runner scale set found with
    # identifier 1"); typeName from ARC #3935 / #4370.
    return ActionsError(
        404,
        "RunnerScaleSetNotFoundException",
        f"No runner scale set found with identifier {identifier}",
    )


def bad_request(message: str) -> ActionsError:
    return ActionsError(400, "ArgumentException", message, namespace="System")  # (guess)


class RequestState(enum.Enum):
    AVAILABLE = "available"  # offered (JobAvailable), waiting for acquirejobs
    ACQUIRED = "acquired"  # acquired, waiting for capacity
    ASSIGNED = "assigned"  # JobAssigned: waiting for an idle runner of the scale set
    RUNNING = "running"  # a runner took it (JobStarted)
    DONE = "done"  # JobCompleted sent; the request is over


@dataclass(kw_only=True)
class Label:
    name: str
    type: str = "System"


@dataclass(kw_only=True)
class RunnerRequest:
    """One offer of a job to a scale set (``runnerRequestId``); a requeue makes a new one."""

    id: int
    job: Job
    scale_set_id: int
    job_guid: str  # "jobId": a string, not the REST job id (GARM PR #459)
    queued_at: float
    state: RequestState = RequestState.AVAILABLE
    offered_at: float | None = None  # when a poll first delivered its JobAvailable
    assigned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    offers: int = 1


@dataclass(kw_only=True)
class QueueMessage:
    id: int
    body: str  # a JSON string holding the array of job messages


@dataclass(kw_only=True)
class ScaleSetSession:
    id: str  # a UUID
    owner: str
    last_seen: float  # emulator clock
    polls: int = 0


@dataclass(kw_only=True)
class QueueToken:
    scale_set_id: int
    session_id: str
    expires_at: float


@dataclass(kw_only=True)
class ScaleSet:
    id: int
    name: str
    scope: RunnerScope
    group: RunnerGroup
    labels: list[Label]
    runner_setting: dict[str, Any]
    created_on: float
    session: ScaleSetSession | None = None
    capacity: int | None = None  # X-ScaleSetMaxCapacity of the last poll; None: not told yet
    events: list[dict[str, Any]] = field(default_factory=list)  # not yet in a message
    messages: dict[int, QueueMessage] = field(default_factory=dict)  # delivered, not deleted

    def label_names(self) -> list[str]:
        """The labels a job may name: the scale set's name, then its labels (no duplicates)."""
        names = {self.name.lower(): self.name}
        for label in self.labels:
            names.setdefault(label.name.lower(), label.name)
        return list(names.values())


@dataclass(frozen=True, kw_only=True)
class Statistics:
    total_available_jobs: int
    total_acquired_jobs: int
    total_assigned_jobs: int  # assigned or running: what a listener scales on
    total_running_jobs: int
    total_registered_runners: int
    total_busy_runners: int
    total_idle_runners: int

    def json(self) -> dict[str, int]:
        return {
            "totalAvailableJobs": self.total_available_jobs,
            "totalAcquiredJobs": self.total_acquired_jobs,
            "totalAssignedJobs": self.total_assigned_jobs,
            "totalRunningJobs": self.total_running_jobs,
            "totalRegisteredRunners": self.total_registered_runners,
            "totalBusyRunners": self.total_busy_runners,
            "totalIdleRunners": self.total_idle_runners,
        }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: Mapping[str, Any]) -> str:
    """A JWT-shaped token: real header and claims, a random signature (the emulator looks the
    token up; clients only decode ``exp``, never verify)."""
    header = {"typ": "JWT", "alg": "RS256", "x5t": _b64url(secrets.token_bytes(20))}
    parts = (json.dumps(header), json.dumps(dict(claims)))
    return ".".join(_b64url(p.encode()) for p in parts) + "." + _b64url(secrets.token_bytes(64))


def agent_not_found(runner_id: object) -> ActionsError:
    return ActionsError(
        404,
        "AgentNotFoundException",
        f"No agent found in pool 0 which has an ID of {runner_id}.",  # message (guess)
        namespace=DISTRIBUTED_TASK,
    )
