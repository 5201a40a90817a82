"""agent/ops/protocol.py: every message survives encode -> JSON -> decode, decoding refuses what
does not fit, and every request, sent by the real client to the real admin server on a unix
socket, comes back as the message type it names (and, for secrets, the same without a daemon).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from agent.config import load_config
from agent.container.lifecycle import Runner, RunnerState
from agent.github.client import RunnerTarget
from agent.ops import protocol
from agent.ops.admin_client import AdminClient, ControlError
from agent.ops.admin_server import AdminApp, serve_admin
from agent.ops.commands import local_secrets
from agent.ops.protocol import (
    Answer,
    AuditList,
    AuditRecord,
    Collected,
    ConfigState,
    Draining,
    ErrorAnswer,
    FleetHost,
    FleetPool,
    FleetStatus,
    JobCancelled,
    JobDetail,
    JobInfo,
    JobList,
    JobRetried,
    KeyRotated,
    PoolStatus,
    ProtocolError,
    QueueStatus,
    Request,
    Resumed,
    RunnerStatus,
    SecretList,
    SecretRemoved,
    SecretStored,
    SecretSummary,
    Status,
    decode,
    encode,
)
from agent.ops.usage import UsageTracker
from agent.queue.base import JobSpec, JobState
from agent.queue.sqlite import open_sqlite_queue
from agent.reload import LiveConfig
from agent.secrets import Action, open_secret_store
from tests.ops.admin_doubles import Paused, Pools
from tests.test_cli import credentials, example_config  # noqa: F401 - fixture

JOB = JobInfo(
    id=9_007_199_254_740_993,  # above 2**53: must not pass through a float
    repository="octo-org/app",
    pool="default",
    priority=5,
    name="build",
    workflow="",
    state=JobState.QUEUED,
    attempts=0,
    enqueued_at=1_700_000_000.25,
    not_before=1_700_000_000,  # an int where a float is expected: JSON does not tell them apart
    runner=None,
    conclusion=None,
    last_error="image missing",
    position=1,
)
STATUS = Status(
    version="0.1.0",
    instance="host-1",
    uptime=None,
    paused=True,
    config=ConfigState(
        path="/etc/gantryd/config.toml",
        last_reload_ok=False,
        last_reload_at=1_700_000_000.5,
        max_runners=8,
        restart_pending=("github.api_url", "server.listen"),
    ),
    pools=(
        PoolStatus(
            name="default",
            labels=("self-hosted", "linux"),
            max_runners=4,
            runners={RunnerState.IDLE: 1, RunnerState.BUSY: 2},
            queue={JobState.QUEUED: 3},
        ),
        PoolStatus(name="empty", labels=(), max_runners=1, runners={}, queue={}),
    ),
    runners=(
        RunnerStatus(
            name="gantryd-host-1-abc",
            pool="default",
            state=RunnerState.BUSY,
            job=42,
            repository=None,
            age=12.5,
            in_state=0.0,
            cpu=0.25,
            memory=1 << 30,
        ),
    ),
    queue=QueueStatus(by_state={JobState.QUEUED: 3, JobState.DEAD: 0}, jobs=(JOB,)),
)
# One of every message the server answers with (nested ones are inside these).
FLEET = FleetStatus(
    instance="build-1",
    backend="redis",
    hosts=(
        FleetHost(
            host="build-1",
            version="0.1.0",
            gone=False,
            drained=True,
            runners=3,
            max_runners=10,
            pools=(FleetPool(name="linux", runners=3, max_runners=4),),
            heartbeat_age=2.5,
            started_at=1.0,
            leases=("reconciler",),
        ),
    ),
)

EXAMPLES: tuple[Answer, ...] = (
    STATUS,
    FLEET,
    JobList(complete=False, jobs=(JOB, JOB)),
    JobDetail(**vars(JOB), runners=("gantryd-host-1-abc",)),
    JobCancelled(cancelled=12),
    JobRetried(retried=12),
    Draining(paused=True, runners=0),
    Resumed(paused=False),
    Collected(removed=()),
    SecretList(secrets=(SecretSummary(name="NPM_TOKEN", created_at=1.0, updated_at=2.0),)),
    SecretStored(set="NPM_TOKEN"),
    SecretRemoved(removed="NPM_TOKEN"),
    KeyRotated(rotated=3),
    AuditList(
        audit=(
            AuditRecord(
                at=3.0, secret="NPM_TOKEN", action=Action.INJECT, runner="r", job=7, actor="a"
            ),
        )
    ),
    ErrorAnswer(error="job 999 is not in the queue"),
)


def wire(message: Answer) -> object:
    """What the client receives: the server's encoding, through JSON text."""
    return json.loads(json.dumps(encode(message)))


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(typing.get_args(Answer))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Answer) -> None:
    decoded = decode(type(message), wire(message))
    assert decoded == message
    assert encode(decoded) == encode(message)


def test_the_wire_form_is_plain_json_with_enums_by_value() -> None:
    data = wire(STATUS)
    assert isinstance(data, dict)
    assert data["runners"][0]["state"] == "busy"
    assert data["pools"][0]["runners"] == {"idle": 1, "busy": 2}
    assert data["config"]["restart_pending"] == ["github.api_url", "server.listen"]
    assert data["queue"]["jobs"][0]["id"] == 9_007_199_254_740_993


def test_decoding_checks_every_field() -> None:
    good = wire(STATUS)
    assert isinstance(good, dict)

    def broken(path: list[str | int], value: object) -> object:
        data = json.loads(json.dumps(good))
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data

    cases: list[tuple[list[str | int], object, str]] = [
        (["paused"], "yes", "Status.paused"),
        (["config", "max_runners"], 8.0, "Status.config.max_runners"),
        (["config", "max_runners"], True, "Status.config.max_runners"),  # a bool is no int
        (["runners", 0, "state"], "sleeping", "Status.runners.state"),
        (["runners", 0, "job"], "42", "Status.runners.job"),
        (["pools", 0, "queue"], {"waiting": 1}, "Status.pools.queue"),
        (["queue", "jobs"], {"id": 1}, "Status.queue.jobs"),
        (["queue", "jobs", 0, "enqueued_at"], None, "Status.queue.jobs.enqueued_at"),
    ]
    for path, value, where in cases:
        with pytest.raises(ProtocolError) as caught:
            decode(Status, broken(path, value))
        assert caught.value.where.replace("[0]", "") == where, (path, value)
    with pytest.raises(ProtocolError, match="JobCancelled: expected an object"):
        decode(JobCancelled, [12])
    with pytest.raises(ProtocolError, match=r"JobCancelled\.cancelled: expected a value"):
        decode(JobCancelled, {"retried": 12})


def test_an_older_daemons_status_decodes_with_defaults() -> None:
    """A CLI upgraded before the daemon restarts: fields it does not know yet, or no longer
    sends, do not make ``gantryd status`` fail."""
    data = wire(STATUS)
    assert isinstance(data, dict)
    del data["config"]["restart_pending"]
    data["config"]["something_newer"] = 1
    status = decode(Status, data)
    assert status.config.restart_pending == ()
    assert status.runners == STATUS.runners


# -- both ends on a real socket ----------------------------------------------------------------


def _spec(job_id: int) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        run_id=1,
        run_attempt=1,
        repository="octo-org/app",
        installation_id=1,
        labels=("self-hosted",),
        pool="default",
    )


@pytest.fixture
async def client(credentials: Path) -> AsyncIterator[AdminClient]:  # noqa: F811
    live = LiveConfig(load_config(example_config(credentials)))
    pools = Pools()
    removed: list[str] = []

    async def gc() -> list[str]:
        removed.append("gantryd-test-orphan")
        return list(removed)

    async with (
        open_sqlite_queue(credentials / "queue.db") as queue,
        open_secret_store(credentials) as secrets,
        trio.open_nursery() as nursery,
    ):
        await queue.enqueue(_spec(11))
        await queue.enqueue(_spec(12))
        (lease,) = await queue.claim(1, lease_seconds=60)
        pools.held.append(
            Runner(
                name="gantryd-test-1",
                pool="default",
                target=RunnerTarget(repository="octo-org/app"),
                installation_id=1,
                labels=("self-hosted",),
                created_at=0.0,
                state=RunnerState.IDLE,
                made_for=lease.job_id,
                lease=lease,
            )
        )
        app = AdminApp(
            live=live,
            queue=queue,
            scheduler=Paused(),
            pools=pools,
            instance="test",
            usage=UsageTracker(),
            secrets=secrets,
            gc=gc,
            started_at=1.0,
        )
        path = await nursery.start(serve_admin, app, credentials / "run")
        yield AdminClient(path)
        nursery.cancel_scope.cancel()


def _builders() -> set[str]:
    """The names of every request ``agent.ops.protocol`` offers."""
    return {
        name
        for name, value in vars(protocol).items()
        if inspect.isfunction(value)
        and str(inspect.signature(value).return_annotation).startswith("Request[")
    }


def _requests() -> list[tuple[str, Request[typing.Any]]]:
    """Every request in an order the fixture's state answers without an error."""
    return [
        ("get_status", protocol.get_status()),
        ("list_jobs", protocol.list_jobs()),
        ("list_jobs", protocol.list_jobs((JobState.QUEUED,), pool="default", limit=1)),
        ("get_job", protocol.get_job(11)),
        ("cancel_job", protocol.cancel_job(12)),
        ("retry_job", protocol.retry_job(12)),
        ("drain", protocol.drain()),
        ("resume", protocol.resume()),
        ("collect_garbage", protocol.collect_garbage()),
        ("set_secret", protocol.set_secret("NPM_TOKEN", b"value")),
        ("list_secrets", protocol.list_secrets()),
        ("secret_audit", protocol.secret_audit("NPM_TOKEN", limit=10)),
        ("rotate_key", protocol.rotate_key()),
        ("remove_secret", protocol.remove_secret("NPM_TOKEN")),
        ("get_fleet", protocol.get_fleet()),  # the fixture's app has no fleet: "sqlite"
    ]


async def test_every_request_is_answered_with_the_message_it_names(client: AdminClient) -> None:
    sent = set()
    answers = []
    for name, request in _requests():
        answer = await trio.to_thread.run_sync(client.call, request)
        assert type(answer) is request.answer, name
        sent.add(name)
        answers.append(answer)
    assert sent == _builders()
    status, everything, queued, job = answers[:4]
    assert isinstance(status, Status) and status.runners[0].state is RunnerState.IDLE
    assert status.runners[0].job == 11 and status.config.restart_pending == ()
    assert isinstance(everything, JobList) and [j.id for j in everything.jobs] == [11, 12]
    assert isinstance(queued, JobList) and [j.id for j in queued.jobs] == [12]
    assert not queued.complete
    assert isinstance(job, JobDetail) and job.runners == ("gantryd-test-1",)
    assert answers[8] == Collected(removed=("gantryd-test-orphan",))
    audit = answers[11]
    assert isinstance(audit, AuditList) and [e.action for e in audit.audit] == [Action.SET]
    assert answers[-1] == FleetStatus(instance=status.instance, backend="sqlite", hosts=())


async def test_a_refusal_reaches_the_client_as_its_message(client: AdminClient) -> None:
    with pytest.raises(ControlError, match="job 999 is not in the queue"):
        await trio.to_thread.run_sync(client.call, protocol.get_job(999))
    with pytest.raises(ControlError, match="secret NOPE is not in the store"):
        await trio.to_thread.run_sync(client.call, protocol.remove_secret("NOPE"))


def test_secrets_without_a_daemon_answer_the_same_messages(tmp_path: Path) -> None:
    secrets = [(n, r) for n, r in _requests() if r.parts[0] == "secrets"]
    for name, request in secrets:
        assert type(local_secrets(tmp_path, request)) is request.answer, name
    assert {n for n, _ in secrets} == {n for n in _builders() if "secret" in n or "key" in n}
    with pytest.raises(ControlError, match="secret NOPE is not in the store"):
        local_secrets(tmp_path, protocol.remove_secret("NOPE"))
