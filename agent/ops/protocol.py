"""The admin socket's protocol, shared by both ends: where the socket is, each request the CLI
sends (``Request``) and the message it gets back, as frozen dataclasses.

The server builds these messages from its objects and sends ``encode(message)`` as JSON; the
client turns the JSON back with ``decode(request.answer, data)``, which checks every field's
type, so neither end reads an untyped dict by key and mypy checks both. A field added later has
a default, so a CLI newer than the running daemon still reads its answers (the field takes the
default); an answer that does not fit is a ``ProtocolError``. A refused request is answered
with ``ErrorAnswer`` and the HTTP status of the ``AdminError`` that refused it.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from agent.container.lifecycle import RunnerState
from agent.queue.base import JobState
from agent.secrets import Action

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SOCKET_NAME = "admin.sock"
JOBS_SHOWN = 500  # /jobs without ?limit=
MAX_JOBS_SHOWN = 10_000

Json = str | int | float | bool | None | list["Json"] | dict[str, "Json"]
M = TypeVar("M", bound="DataclassInstance")


def socket_path(runtime_dir: Path) -> Path:
    """Where the daemon listens and the CLI connects: ``<server.runtime_dir>/admin.sock``."""
    return runtime_dir / SOCKET_NAME


class AdminError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, the message the
    ``ErrorAnswer`` the client shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(Exception):
    """An answer that is not the message its request expects (another gantryd version?)."""

    def __init__(self, where: str, expected: str, got: object) -> None:
        super().__init__(f"{where}: expected {expected}, got {got!r:.80}")
        self.where = where


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ConfigState:
    path: str
    last_reload_ok: bool
    last_reload_at: float  # unix time of the last successful load
    max_runners: int  # scheduler.max_runners
    restart_pending: tuple[str, ...] = ()  # restart-only keys changed on disk, not applied


@dataclass(frozen=True, kw_only=True)
class PoolStatus:
    name: str
    labels: tuple[str, ...]
    max_runners: int
    runners: dict[RunnerState, int]  # only states with runners
    queue: dict[JobState, int]  # only states with entries
    notes: tuple[str, ...] = ()  # why it is held, which repositories it never serves
    # scale-set pools: "listening", or the state and why (a session conflict waited out)
    listener: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunnerStatus:
    name: str
    pool: str
    state: RunnerState
    job: int | None  # the job it runs, else the one it was made for
    repository: str | None  # or the organization it is registered to
    age: float  # seconds since created
    in_state: float  # seconds in its current state
    cpu: float | None  # cores in use; None until sampled
    memory: int | None  # bytes; None until sampled


@dataclass(frozen=True, kw_only=True)
class JobInfo:
    id: int
    repository: str
    pool: str
    priority: int
    name: str
    workflow: str
    state: JobState
    attempts: int
    enqueued_at: float
    not_before: float
    runner: str | None
    conclusion: str | None
    last_error: str | None
    position: int | None  # place in its pool's serving order; None when not claimable now


@dataclass(frozen=True, kw_only=True)
class JobDetail(JobInfo):
    runners: tuple[str, ...]  # this host's runners made for it or running it


@dataclass(frozen=True, kw_only=True)
class QueueStatus:
    by_state: dict[JobState, int]
    jobs: tuple[JobInfo, ...]  # waiting ones, in serving order


@dataclass(frozen=True, kw_only=True)
class Status:
    version: str
    instance: str
    uptime: float | None
    paused: bool
    config: ConfigState
    pools: tuple[PoolStatus, ...]
    runners: tuple[RunnerStatus, ...]
    queue: QueueStatus


@dataclass(frozen=True, kw_only=True)
class FleetPool:
    name: str
    runners: int
    max_runners: int


@dataclass(frozen=True, kw_only=True)
class FleetHost:
    host: str
    version: str
    gone: bool  # no heartbeat for agent.fleet.hosts.GONE_AFTER: its leases were released
    drained: bool
    runners: int  # in use, all pools
    max_runners: int
    pools: tuple[FleetPool, ...]
    heartbeat_age: float  # seconds since its last heartbeat
    started_at: float
    leases: tuple[str, ...]  # the fleet chores it holds


@dataclass(frozen=True, kw_only=True)
class FleetStatus:
    instance: str  # the host that answered
    backend: str  # "redis"; "sqlite": a single host, nothing shared
    hosts: tuple[FleetHost, ...]


@dataclass(frozen=True, kw_only=True)
class JobList:
    complete: bool  # False: the limit cut the listing short
    jobs: tuple[JobInfo, ...]


@dataclass(frozen=True, kw_only=True)
class JobCancelled:
    cancelled: int


@dataclass(frozen=True, kw_only=True)
class JobRetried:
    retried: int


@dataclass(frozen=True, kw_only=True)
class Draining:
    paused: bool
    runners: int  # runners still alive


@dataclass(frozen=True, kw_only=True)
class Resumed:
    paused: bool


@dataclass(frozen=True, kw_only=True)
class Collected:
    removed: tuple[str, ...]  # names of the containers, volumes and networks removed


@dataclass(frozen=True, kw_only=True)
class SecretSummary:
    name: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class SecretList:
    secrets: tuple[SecretSummary, ...]


@dataclass(frozen=True, kw_only=True)
class SecretStored:
    set: str


@dataclass(frozen=True, kw_only=True)
class SecretRemoved:
    removed: str


@dataclass(frozen=True, kw_only=True)
class KeyRotated:
    rotated: int  # values re-encrypted


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    at: float
    secret: str
    action: Action
    runner: str | None
    job: int | None
    actor: str


@dataclass(frozen=True, kw_only=True)
class AuditList:
    audit: tuple[AuditRecord, ...]


@dataclass(frozen=True, kw_only=True)
class ErrorAnswer:
    error: str


SecretsAnswer = SecretList | SecretStored | SecretRemoved | KeyRotated | AuditList
Answer = (
    Status
    | FleetStatus
    | JobList
    | JobDetail
    | JobCancelled
    | JobRetried
    | Draining
    | Resumed
    | Collected
    | SecretsAnswer
    | ErrorAnswer
)

# -- requests ----------------------------------------------------------------------------------

A = TypeVar("A", bound=Answer)


@dataclass(frozen=True)
class Request(Generic[A]):
    """One admin call: what the client sends and the message type the server answers with."""

    method: str
    parts: tuple[str, ...]  # the path's segments
    answer: type[A]
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None

    @property
    def url(self) -> str:
        path = "/" + "/".join(quote(p, safe="") for p in self.parts)
        return path + ("?" + urlencode(self.query) if self.query else "")


def get_status() -> Request[Status]:
    return Request("GET", ("status",), Status)


def get_fleet() -> Request[FleetStatus]:
    return Request("GET", ("fleet",), FleetStatus)


def list_jobs(
    states: tuple[JobState, ...] = (), *, pool: str | None = None, limit: int | None = None
) -> Request[JobList]:
    """Waiting jobs in serving order, then the newest; all states when ``states`` is empty."""
    query = {"state": ",".join(states), "pool": pool or "", "limit": str(limit) if limit else ""}
    return Request("GET", ("jobs",), JobList, {k: v for k, v in query.items() if v})


def get_job(job_id: int) -> Request[JobDetail]:
    return Request("GET", ("jobs", str(job_id)), JobDetail)


def cancel_job(job_id: int) -> Request[JobCancelled]:
    return Request("POST", ("jobs", str(job_id), "cancel"), JobCancelled)


def retry_job(job_id: int) -> Request[JobRetried]:
    return Request("POST", ("jobs", str(job_id), "retry"), JobRetried)


def drain() -> Request[Draining]:
    return Request("POST", ("drain",), Draining)


def resume() -> Request[Resumed]:
    return Request("POST", ("resume",), Resumed)


def collect_garbage() -> Request[Collected]:
    return Request("POST", ("gc",), Collected)


def list_secrets() -> Request[SecretList]:
    return Request("GET", ("secrets",), SecretList)


def set_secret(name: str, value: bytes) -> Request[SecretStored]:
    return Request("PUT", ("secrets", name), SecretStored, body=value)


def remove_secret(name: str) -> Request[SecretRemoved]:
    return Request("DELETE", ("secrets", name), SecretRemoved)


def rotate_key() -> Request[KeyRotated]:
    return Request("POST", ("secrets", "rotate-key"), KeyRotated)


def secret_audit(name: str | None = None, *, limit: int = 100) -> Request[AuditList]:
    query = {"limit": str(limit)} | ({"secret": name} if name else {})
    return Request("GET", ("secrets", "audit"), AuditList, query)


# -- encoding ----------------------------------------------------------------------------------


def encode(message: DataclassInstance) -> dict[str, Json]:
    """The JSON object of a message: enums by value, tuples as lists."""
    return {f.name: _encode_value(getattr(message, f.name)) for f in fields(message)}


def _encode_value(value: object) -> Json:
    if is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, enum.Enum):
        return _encode_value(value.value)
    if isinstance(value, tuple | list):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(_encode_value(k)): _encode_value(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"{type(value).__name__} has no place in an admin message")


def decode(cls: type[M], data: object, where: str = "") -> M:
    """The message ``cls`` from its JSON object, every field's type checked; unknown keys are
    ignored and missing ones take their default (another version's message)."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ProtocolError(where, "an object", data)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _decode_value(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ProtocolError(f"{where}.{f.name}", "a value", "nothing")
    make: Callable[..., M] = cls
    return make(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_value(kind: Any, value: object, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is types.UnionType or origin is typing.Union:
        (inner,) = (a for a in args if a is not types.NoneType)  # only "X | None" is used
        return None if value is None else _decode_value(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(where, "a list", value)
        return tuple(_decode_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(where, "an object", value)
        return {
            _decode_value(args[0], k, where): _decode_value(args[1], v, f"{where}.{k}")
            for k, v in value.items()
        }
    if isinstance(kind, type) and is_dataclass(kind):
        return decode(kind, value, where)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            raise ProtocolError(where, f"a {kind.__name__}", value) from None
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (str, bool) and isinstance(value, kind):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, int, float, bool):
        raise ProtocolError(where, f"a {kind.__name__}", value)
    raise TypeError(f"{kind!r} has no place in an admin message")
