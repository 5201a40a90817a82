"""The records of the runner scale-set protocol, parsed from the Actions service's JSON.

Field names and shapes from actions/scaleset ``types.go`` (docs/scale-set.md). Parsing is strict
about what gantryd relies on (ids, kinds, counts) and lenient about the rest: an unknown job
message kind inside a batch is skipped, as the upstream client does, so a new kind GitHub adds
does not stop a listener.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.github.auth import Secret

MESSAGE_TYPE = "RunnerScaleSetJobMessages"


class ProtocolError(ValueError):
    """The Actions service answered with JSON that does not have the expected shape."""


class JobMessageKind(enum.StrEnum):
    AVAILABLE = "JobAvailable"  # offered to the scale set: acquire it (required on GHES)
    ASSIGNED = "JobAssigned"  # assigned to the scale set: a runner of it will get it
    STARTED = "JobStarted"  # a runner of the scale set took it (runner id and name set)
    COMPLETED = "JobCompleted"  # over; ``result`` says how ("canceled": never acquired in time)


def _int(body: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{key!r} is not an integer: {value!r}")
    return value


def _str(body: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ProtocolError(f"{key!r} is not a string: {value!r}")
    return value


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object: {value!r:.200}")
    return value


@dataclass(frozen=True, kw_only=True)
class Statistics:
    """The scale set's counters; scale on ``total_assigned_jobs`` (assigned or running)."""

    total_available_jobs: int = 0
    total_acquired_jobs: int = 0
    total_assigned_jobs: int = 0
    total_running_jobs: int = 0
    total_registered_runners: int = 0
    total_busy_runners: int = 0
    total_idle_runners: int = 0

    @classmethod
    def from_json(cls, value: object) -> Statistics:
        body = _object(value, "statistics")
        return cls(
            total_available_jobs=_int(body, "totalAvailableJobs", 0),
            total_acquired_jobs=_int(body, "totalAcquiredJobs", 0),
            total_assigned_jobs=_int(body, "totalAssignedJobs", 0),
            total_running_jobs=_int(body, "totalRunningJobs", 0),
            total_registered_runners=_int(body, "totalRegisteredRunners", 0),
            total_busy_runners=_int(body, "totalBusyRunners", 0),
            total_idle_runners=_int(body, "totalIdleRunners", 0),
        )


@dataclass(frozen=True, kw_only=True)
class RunnerGroup:
    id: int
    name: str
    is_default: bool

    @classmethod
    def from_json(cls, value: object) -> RunnerGroup:
        body = _object(value, "runner group")
        return cls(
            id=_int(body, "id"),
            name=_str(body, "name"),
            is_default=bool(body.get("isDefaultGroup", False)),
        )


@dataclass(frozen=True, kw_only=True)
class ScaleSetSpec:
    """What gantryd wants a scale set to be. Jobs name it in ``runs-on`` by ``name`` (always a
    label) or by extra ``labels`` (where GitHub honours them: docs/scale-set.md)."""

    name: str
    runner_group: str = "default"  # the service matches group names case-insensitively
    labels: tuple[str, ...] = ()
    disable_update: bool = True  # JIT runners cannot self-update anyway

    def label_names(self) -> tuple[str, ...]:
        """The labels sent: the name first (as actions/scaleset does), then the extra ones."""
        names = {self.name.lower(): self.name}
        for label in self.labels:
            names.setdefault(label.lower(), label)
        return tuple(names.values())

    def body(self, runner_group_id: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "runnerGroupId": runner_group_id,
            "labels": [{"name": name, "type": "System"} for name in self.label_names()],
            "RunnerSetting": {"disableUpdate": self.disable_update},
        }


@dataclass(frozen=True, kw_only=True)
class ScaleSet:
    id: int
    name: str
    runner_group_id: int
    runner_group_name: str
    labels: tuple[str, ...]
    disable_update: bool
    statistics: Statistics | None

    @classmethod
    def from_json(cls, value: object) -> ScaleSet:
        body = _object(value, "runner scale set")
        labels = body.get("labels") or []
        if not isinstance(labels, list):
            raise ProtocolError(f"'labels' is not a list: {labels!r}")
        setting = body.get("RunnerSetting") or {}
        statistics = body.get("statistics")
        return cls(
            id=_int(body, "id"),
            name=_str(body, "name"),
            runner_group_id=_int(body, "runnerGroupId", 0),
            runner_group_name=_str(body, "runnerGroupName", ""),
            labels=tuple(_str(_object(label, "label"), "name") for label in labels),
            disable_update=bool(_object(setting, "RunnerSetting").get("disableUpdate", False)),
            statistics=Statistics.from_json(statistics) if statistics is not None else None,
        )

    def matches(self, spec: ScaleSetSpec, runner_group_id: int) -> bool:
        """Whether the stored scale set already is what ``spec`` asks (no update needed)."""
        return (
            self.runner_group_id == runner_group_id
            and {label.lower() for label in self.labels}
            == {label.lower() for label in spec.label_names()}
            and self.disable_update == spec.disable_update
        )


@dataclass(frozen=True, kw_only=True)
class RunnerReference:
    id: int
    name: str
    scale_set_id: int

    @classmethod
    def from_json(cls, value: object) -> RunnerReference:
        body = _object(value, "runner")
        return cls(
            id=_int(body, "id"),
            name=_str(body, "name"),
            scale_set_id=_int(body, "runnerScaleSetId", 0),
        )


@dataclass(frozen=True, kw_only=True)
class JobMessage:
    """One job event of a batch. ``runner_request_id`` is what ``acquirejobs`` takes;
    ``job_id`` is the service's own job id (a string, not the REST job id)."""

    kind: JobMessageKind
    runner_request_id: int
    repository: str  # "owner/name"
    job_id: str
    job_display_name: str
    job_workflow_ref: str
    workflow_run_id: int
    event_name: str
    labels: tuple[str, ...]
    runner_id: int | None = None  # JobStarted, JobCompleted
    runner_name: str | None = None
    result: str | None = None  # JobCompleted: "succeeded", "failed", "canceled", ...
    times: Mapping[str, str] = field(default_factory=dict)  # queueTime, … as sent

    @classmethod
    def from_json(cls, body: Mapping[str, Any], kind: JobMessageKind) -> JobMessage:
        labels = body.get("requestLabels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ProtocolError(f"'requestLabels' is not a list of strings: {labels!r}")
        runner_id = body.get("runnerId")
        runner_name = body.get("runnerName")
        result = body.get("result")
        times = ("queueTime", "scaleSetAssignTime", "runnerAssignTime", "finishTime")
        return cls(
            kind=kind,
            runner_request_id=_int(body, "runnerRequestId"),
            repository=f"{_str(body, 'ownerName', '')}/{_str(body, 'repositoryName', '')}",
            job_id=str(body.get("jobId", "")),
            job_display_name=_str(body, "jobDisplayName", ""),
            job_workflow_ref=_str(body, "jobWorkflowRef", ""),
            workflow_run_id=_int(body, "workflowRunId", 0),
            event_name=_str(body, "eventName", ""),
            labels=tuple(labels),
            runner_id=runner_id if isinstance(runner_id, int) and runner_id else None,
            runner_name=runner_name if isinstance(runner_name, str) and runner_name else None,
            result=result if isinstance(result, str) else None,
            times={k: str(body[k]) for k in times if isinstance(body.get(k), str)},
        )


@dataclass(frozen=True, kw_only=True)
class ScaleSetMessage:
    """One queue message: a batch of job events (at most 50) and the statistics with it."""

    id: int
    statistics: Statistics
    jobs: tuple[JobMessage, ...]

    @classmethod
    def from_json(cls, value: object) -> ScaleSetMessage:
        body = _object(value, "message")
        kind = body.get("messageType")
        if kind != MESSAGE_TYPE:
            raise ProtocolError(f"unsupported message type {kind!r}")
        raw = body.get("body") or ""
        if not isinstance(raw, str):
            raise ProtocolError("'body' is not a string (it holds JSON)")
        try:
            batch = json.loads(raw) if raw else []
        except ValueError as exc:
            raise ProtocolError(f"'body' is not JSON: {exc}") from None
        if not isinstance(batch, list):
            raise ProtocolError("'body' does not hold a JSON array")
        jobs = []
        for item in batch:
            event = _object(item, "job message")
            try:
                event_kind = JobMessageKind(str(event.get("messageType")))
            except ValueError:
                continue  # a kind this client does not know (upstream skips them too)
            jobs.append(JobMessage.from_json(event, event_kind))
        statistics = body.get("statistics")
        return cls(
            id=_int(body, "messageId"),
            statistics=Statistics.from_json(statistics) if statistics is not None else Statistics(),
            jobs=tuple(jobs),
        )

    def of_kind(self, kind: JobMessageKind) -> list[JobMessage]:
        return [job for job in self.jobs if job.kind is kind]


@dataclass(kw_only=True)
class MessageSession:
    """An open message session. Mutable: a refresh replaces the queue URL and token in place,
    so every holder of the session sees the fresh token."""

    id: str
    scale_set_id: int
    owner: str
    queue_url: str
    queue_token: Secret = field(repr=False)
    statistics: Statistics
    scale_set: ScaleSet

    @classmethod
    def from_json(cls, value: object, scale_set_id: int) -> MessageSession:
        body = _object(value, "session")
        statistics = body.get("statistics")
        return cls(
            id=_str(body, "sessionId"),
            scale_set_id=scale_set_id,
            owner=_str(body, "ownerName", ""),
            queue_url=_str(body, "messageQueueUrl"),
            queue_token=Secret(_str(body, "messageQueueAccessToken")),
            statistics=Statistics.from_json(statistics) if statistics is not None else Statistics(),
            scale_set=ScaleSet.from_json(body.get("runnerScaleSet")),
        )

    def update(self, fresh: MessageSession) -> None:
        self.queue_url = fresh.queue_url
        self.queue_token = fresh.queue_token
        self.statistics = fresh.statistics
        self.scale_set = fresh.scale_set
