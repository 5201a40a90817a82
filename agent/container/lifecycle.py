"""The runner state machine: what a runner container is doing and which moves are legal.

    CREATING -> STARTING -> IDLE -> BUSY -> FINISHED -> REMOVED
         \\_________\\________\\_______\\__________-> FAILED -> REMOVED

IDLE means the runner process is up and waiting for GitHub to give it a job. A runner is made
for one job (``made_for``, set with ``assign``) but GitHub may hand it any queued job its labels
cover (docs/design.md §1), so the job it actually runs (``running_job``, set with ``start_job``) can
differ; the pool manager swaps associations.

Every fact about one runner is a field of ``Runner``: the pool manager keeps no parallel maps,
so forgetting a runner is dropping one object.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from agent.github.client import RunnerTarget
from agent.queue.base import Lease


class RunnerState(enum.StrEnum):
    CREATING = "creating"  # registering at GitHub, creating the container
    STARTING = "starting"  # container started, runner connecting
    IDLE = "idle"  # connected, waiting for a job
    BUSY = "busy"  # GitHub assigned it a job (in_progress seen)
    FINISHED = "finished"  # its job completed; the container exits by itself
    FAILED = "failed"  # gantryd gave up on it (exit before a job, timeout, Docker error)
    REMOVED = "removed"  # container and registration are gone


_ALLOWED: dict[RunnerState, frozenset[RunnerState]] = {
    RunnerState.CREATING: frozenset({RunnerState.STARTING, RunnerState.FAILED}),
    RunnerState.STARTING: frozenset({RunnerState.IDLE, RunnerState.BUSY, RunnerState.FAILED}),
    RunnerState.IDLE: frozenset({RunnerState.BUSY, RunnerState.FAILED, RunnerState.REMOVED}),
    RunnerState.BUSY: frozenset({RunnerState.FINISHED, RunnerState.FAILED}),
    RunnerState.FINISHED: frozenset({RunnerState.REMOVED}),
    RunnerState.FAILED: frozenset({RunnerState.REMOVED}),
    RunnerState.REMOVED: frozenset(),
}

WAITING_STATES = frozenset({RunnerState.CREATING, RunnerState.STARTING, RunnerState.IDLE})
LIVE_STATES = frozenset(RunnerState) - {RunnerState.REMOVED}


class IllegalTransition(Exception):
    def __init__(self, name: str, old: RunnerState, new: RunnerState) -> None:
        super().__init__(f"runner {name}: {old} -> {new} is not a legal transition")


@dataclass(kw_only=True)
class Runner:
    """One runner container and its GitHub registration. Owned by the pool manager."""

    name: str
    pool: str
    target: RunnerTarget
    installation_id: int | None
    labels: tuple[str, ...]
    created_at: float
    memory: int = 0  # its container's memory limit, counted against the host budget
    state: RunnerState = RunnerState.CREATING
    state_since: float = 0.0
    runner_id: int | None = None  # GitHub's id, known once registered
    container_id: str | None = None
    made_for: int | None = None  # the job it was provisioned for; None: a warm runner
    assigned_at: float | None = None  # when made_for was last set (bootstrap_timeout runs)
    repository: str | None = None  # repository of the job it serves (per-repository caps)
    lease: Lease | None = field(default=None, repr=False)  # that job's claim, while it waits
    running_job: int | None = None  # the job GitHub gave it
    exit_code: int | None = None
    reason: str | None = None  # why it failed, for the report
    image_digest: str | None = None
    peak_memory: int = 0  # bytes, highest sample while it ran
    cpu_seconds: float = 0.0
    oom_killed: bool = False
    # docker = "dind" when it was made: a Docker sidecar and shared volumes go with it
    # (agent/container/dind.py); a reload never changes it for a runner already made.
    sidecar: bool = False
    sidecar_id: str | None = None
    timed_out: bool = False  # stopped for job_timeout (stored: the stop is sent once)
    disk_exceeded: bool = False  # stopped for disk_limit (the stop is sent once)
    exited_at: float | None = None  # when its container was seen exited or gone
    retiring: bool = False  # its removal is under way (exit and completion both lead there)

    def move(self, new: RunnerState, *, now: float) -> None:
        if new not in _ALLOWED[self.state]:
            raise IllegalTransition(self.name, self.state, new)
        self.state = new
        self.state_since = now

    def assign(
        self, job_id: int | None, lease: Lease | None, *, repository: str | None, now: float
    ) -> None:
        """Make this waiting runner the one for ``job_id`` (its claim ``lease`` kept alive
        while it waits), or warm again with None; ``repository`` is counted against that
        repository's cap. bootstrap_timeout runs from ``now``."""
        self.made_for, self.lease, self.repository = job_id, lease, repository
        self.assigned_at = None if job_id is None else now

    def start_job(self, job_id: int, *, now: float) -> None:
        """GitHub gave it ``job_id`` (``in_progress``): busy with it, whatever it was made
        for; the queue dropped the job's lease when the job started running."""
        if self.waiting:
            self.move(RunnerState.BUSY, now=now)
        self.running_job = self.made_for = job_id
        self.lease = None

    def mark_exited(self, now: float) -> bool:
        """Record that its container exited; False when that was known already."""
        if self.exited_at is not None:
            return False
        self.exited_at = now
        return True

    @property
    def waiting(self) -> bool:
        """Still available for a job (not yet given one)."""
        return self.state in WAITING_STATES

    @property
    def warm(self) -> bool:
        """Waiting with no job of its own: a warm runner any matching job may take."""
        return self.waiting and self.made_for is None


class Outcome(enum.StrEnum):
    """What the pool supervisor counts (``PoolStats.outcomes``), for metrics and reports."""

    CREATED = "created"  # runner containers started
    WARM_HIT = "warm_hit"  # a claimed job was given a runner that was already waiting
    EXIT_BEFORE_JOB = "exit_before_job"  # the container exited before taking a job
    BOOTSTRAP_TIMEOUT = "bootstrap_timeout"  # took no job within bootstrap_timeout
    IDLE_RECYCLED = "idle_recycled"  # warm runner replaced after max_idle_age
    JOB_TIMEOUT = "job_timeout"  # stopped after job_timeout
    OOM_KILLED = "oom_killed"  # the kernel killed a process of it for memory
    DISK_LIMIT = "disk_limit"  # stopped: it wrote more than its pool's disk_limit
    SCALE_DOWN = "scale_down"  # surplus idle runner removed (GitHub first)
    SCALE_DOWN_REFUSED = "scale_down_refused"  # GitHub answered 422: a job was just assigned
    PROVISION_FAILED = "provision_failed"  # GitHub or Docker refused (pull, create, start)
    ADOPTED = "adopted"  # running container taken over after a restart
    ORPHAN_REGISTRATION_DELETED = "orphan_registration_deleted"
    GC_REMOVED = "gc_removed"  # containers, volumes, networks removed by garbage collection
    IMAGE_OUTDATED = "image_outdated"  # exited 7: GitHub refused the runner's version
    REMOVED_BY_GITHUB = "removed_by_github"  # GitHub dropped the idle runner (a normal end)
    # docker = "dind": the runner's Docker daemon did not start, or died while the runner lived
    DIND_FAILED = "dind_failed"


@dataclass(frozen=True, kw_only=True)
class OutdatedImage:
    """A pool's image whose runner GitHub refused as deprecated (exit 7): the pool takes no job
    until the image changes (a pull or build that yields another id, or a reload)."""

    image: str
    digest: str | None  # the digest (or id) that was refused
    since: float


@dataclass
class PoolStats:
    """Plain counters a metrics module reads; the pool supervisor only ever increments them."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    peak_runners: int = 0  # most live runners at once
    peak_by_repository: dict[str, int] = field(default_factory=dict)  # most live at once
    image_digests: dict[str, str] = field(default_factory=dict)  # image -> digest last seen
    outdated: dict[str, OutdatedImage] = field(default_factory=dict)  # pool -> refused image


class StartKind(enum.StrEnum):
    """How a claimed job got its runner (the ``kind`` of a container start)."""

    WARM = "warm"  # handed to a warm runner already idle: no container start on its path
    COLD = "cold"  # it waited for a container to be created and started (or to finish starting)
    DIND = "dind"  # a runner's Docker sidecar: started until its daemon answered


# GitHub's workflow_job conclusions; anything else is counted as "unknown" so a label never
# takes a value from outside this set (docs/github.md §2: the payload's ``conclusion``).
GITHUB_CONCLUSIONS = frozenset(
    {"success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required"}
)
DEAD = "dead"  # gantryd's own outcome: dead-lettered after retry_attempts infrastructure failures


def job_outcome(conclusion: str | None) -> str:
    """A bounded outcome label from GitHub's conclusion."""
    return conclusion if conclusion in GITHUB_CONCLUSIONS else "unknown"


class PoolObserver(Protocol):
    """What the pool supervisor reports the moment it happens (agent/ops/metrics.py implements it).

    Durations are in seconds of the supervisor's clock. Calls are synchronous and must neither
    block nor raise: they run inside the supervisor's event handling.
    """

    def container_started(self, pool: str, kind: StartKind, seconds: float) -> None:
        """A claimed job has a running runner: cold = claim -> container running, warm = claim
        -> handed to an idle warm runner."""

    def job_started(self, pool: str, queue_wait: float) -> None:
        """A runner of this host took a job (``in_progress``); ``queue_wait`` = since enqueue."""

    def job_ended(self, pool: str, outcome: str, duration: float | None) -> None:
        """A job this host served ended: GitHub's conclusion (``job_outcome``) or ``DEAD``;
        ``duration`` = in_progress -> completed, None when its start was not seen here."""


class NullObserver:
    """Observes nothing: the default for a supervisor run without metrics."""

    def container_started(self, pool: str, kind: StartKind, seconds: float) -> None:
        pass

    def job_started(self, pool: str, queue_wait: float) -> None:
        pass

    def job_ended(self, pool: str, outcome: str, duration: float | None) -> None:
        pass
