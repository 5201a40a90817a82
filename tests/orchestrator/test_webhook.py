"""Intake through real HTTP (hypercorn) onto a real SQLite queue: every intake rule, by section."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.orchestrator.intake_http import RejectionLog
from agent.orchestrator.webhook import ReadinessCheck
from agent.queue.base import JobState
from tests.orchestrator.conftest import (
    NEXT_SECRET,
    Intake,
    make_config,
    new_job_id,
    payload,
    serve_intake,
    sign,
)

FUZZ_EXAMPLES = int(os.environ.get("GANTRYD_FUZZ_EXAMPLES", "150"))
ROOT = Path(__file__).resolve().parents[2]


def test_intake_loads_neither_docker_nor_cryptography() -> None:
    """The intake takes ``JobEvent`` from agent.container.events, not from the pool manager:
    importing it in a fresh interpreter loads neither docker-py nor cryptography."""
    code = (
        "import sys, agent.orchestrator.webhook; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'cryptography'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"


# ---- §1 HTTP behaviour ---------------------------------------------------------------------


async def test_json_and_form_bodies_are_both_queued(intake: Intake) -> None:
    as_json, as_form = new_job_id(), new_job_id()
    first = await intake.post(payload(as_json))
    second = await intake.post(payload(as_form), form=True)
    assert (first.status_code, second.status_code) == (201, 201), second.text
    for job_id in (as_json, as_form):
        entry = await intake.queue.get(job_id)
        assert entry is not None and entry.state is JobState.QUEUED
        assert entry.spec.pool == "default" and entry.spec.installation_id == 1001


async def test_bodies_over_the_cap_get_413_declared_or_streamed(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_body=2048)
    async with serve_intake(config) as intake:
        job_id = new_job_id()
        big = payload(job_id)
        big["padding"] = "x" * 4096
        declared = await intake.post(big)
        assert declared.status_code == 413 and "server.max_body" in declared.text

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
            for _ in range(8):
                yield b"x" * 1024

        streamed = await intake.http.post(
            intake.url + "/webhook",
            content=chunks(),
            headers={"Content-Type": "application/json", "X-GitHub-Event": "workflow_job"},
        )
        assert streamed.status_code == 413
        assert await intake.queue.get(job_id) is None


async def test_missing_or_wrong_signature_is_401_and_changes_nothing(intake: Intake) -> None:
    job_id = new_job_id()
    missing = await intake.post(payload(job_id), secret=None)
    wrong = await intake.post(payload(job_id), secret="not-the-secret")
    sha1_only = await intake.post(
        payload(job_id), secret=None, headers={"X-Hub-Signature": "sha1=abc"}
    )
    assert {missing.status_code, wrong.status_code, sha1_only.status_code} == {401}
    assert "X-Hub-Signature-256" in wrong.text
    assert await intake.queue.get(job_id) is None


async def test_both_rotation_secrets_are_accepted(intake: Intake) -> None:
    old, new = new_job_id(), new_job_id()
    assert (await intake.post(payload(old))).status_code == 201
    assert (await intake.post(payload(new), secret=NEXT_SECRET)).status_code == 201


async def test_malformed_bodies_get_400_naming_the_problem(intake: Intake) -> None:
    broken = await intake.post(b'{"action": "queued", ')
    assert broken.status_code == 400 and "malformed" in broken.text
    no_id = payload(new_job_id())
    del no_id["workflow_job"]["id"]
    missing = await intake.post(no_id)
    assert missing.status_code == 400 and "workflow_job.id" in missing.text
    bad_labels = payload(new_job_id())
    bad_labels["workflow_job"]["labels"] = "self-hosted"
    wrong_type = await intake.post(bad_labels)
    assert wrong_type.status_code == 400 and "workflow_job.labels" in wrong_type.text
    huge = payload(2**64)
    assert (await intake.post(huge)).status_code == 400
    form = b"not_payload=1"
    no_field = await intake.post(
        form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert no_field.status_code == 400 and "payload" in no_field.text
    deep = b"[" * 100_000 + b"]" * 100_000
    assert (await intake.post(deep)).status_code == 400


async def test_other_content_types_get_415(intake: Intake) -> None:
    answer = await intake.post(
        json.dumps(payload(new_job_id())).encode(), headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 415 and "application/json" in answer.text


async def test_ignored_events_are_2xx_with_the_reason_and_counted(intake: Intake) -> None:
    hosted = new_job_id()
    answer = await intake.post(payload(hosted, labels=("ubuntu-latest",)))
    assert answer.status_code == 200 and "ignored: no pool" in answer.text
    push = await intake.post({"ref": "refs/heads/main"}, event="push")
    assert push.status_code == 202 and "push is not workflow_job" in push.text
    ping = await intake.post({"zen": "Design for failure.", "hook_id": 1}, event="ping")
    assert ping.status_code == 200 and "pong" in ping.text
    assert await intake.queue.get(hosted) is None
    assert intake.app.stats.ignored["no_pool"] == 1
    assert intake.app.stats.ignored["event"] == 1


async def test_a_job_with_no_labels_is_ignored_with_the_reason(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    """runs-on: {group: X}: the payload's labels are empty and no group is sent while queued."""
    grouped = new_job_id()
    with caplog.at_level(logging.INFO, logger="agent.orchestrator.webhook"):
        answer = await intake.post(payload(grouped, labels=()))
    assert answer.status_code == 200
    assert "runs-on names no labels, only a runner group" in answer.text
    assert "runner_group_name is null" in answer.text
    assert await intake.queue.get(grouped) is None
    assert intake.app.stats.ignored["no_labels"] == 1
    assert f"job {grouped} of " in caplog.text and "routes by labels" in caplog.text


async def test_deliveries_are_counted_by_event_action_and_outcome(intake: Intake) -> None:
    job_id, guid = new_job_id(), str(uuid.uuid4())
    assert (await intake.post(payload(job_id), delivery=guid)).status_code == 201
    assert (await intake.post(payload(job_id), delivery=guid)).status_code == 200
    assert (await intake.post(payload(job_id), secret=None)).status_code == 401
    running = payload(job_id, "in_progress", runner_name="gantryd-x")
    assert (await intake.post(running)).status_code == 200
    done = payload(job_id, "completed", runner_name="gantryd-x", conclusion="success")
    assert (await intake.post(done)).status_code == 200
    assert (await intake.post(done)).status_code == 200  # again, new GUID: nothing changes
    assert (await intake.post(b"{", event="workflow_job")).status_code == 400
    odd = {**payload(new_job_id()), "action": "reticulated"}
    assert (await intake.post(odd, event="made_up")).status_code == 202
    assert (await intake.post({"zen": "Keep it simple."}, event="ping")).status_code == 200
    assert dict(intake.app.stats.received) == {
        ("workflow_job", "queued", "enqueued"): 1,
        ("workflow_job", "queued", "duplicate"): 1,
        ("workflow_job", "none", "rejected"): 1,
        ("workflow_job", "in_progress", "updated"): 1,
        ("workflow_job", "completed", "updated"): 1,
        ("workflow_job", "completed", "duplicate"): 1,
        ("workflow_job", "none", "invalid"): 1,
        ("other", "other", "ignored"): 1,
        ("ping", "none", "accepted"): 1,
    }


async def test_a_slow_body_gets_408_and_silent_clients_are_cut_off(tmp_path: Path) -> None:
    config = make_config(tmp_path, read_timeout=0.5)
    async with serve_intake(config) as intake:
        host, port = intake.url.removeprefix("http://").rsplit(":", 1)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
                if b"\r\n\r\n" in reply and b"read_timeout" in reply:
                    break
            assert reply.startswith(b"HTTP/1.1 408")
            await stream.aclose()
            silent = await trio.open_tcp_stream(host, int(port))
            await silent.send_all(b"POST /webhook HTTP/1.1\r\n")  # headers never finish
            assert await silent.receive_some() == b""  # the server hung up
            await silent.aclose()


async def test_healthz_and_readyz(tmp_path: Path) -> None:
    state = {"docker": "cannot connect to /var/run/docker.sock"}

    async def docker() -> str | None:
        return state.get("docker")

    async def database() -> str | None:
        return None

    checks: dict[str, ReadinessCheck] = {"database": database, "docker": docker}
    async with serve_intake(make_config(tmp_path), readiness=checks) as intake:
        alive = await intake.http.get(intake.url + "/healthz")
        assert alive.status_code == 200
        not_ready = await intake.http.get(intake.url + "/readyz")
        assert not_ready.status_code == 503
        assert "docker: cannot connect" in not_ready.text and "database" not in not_ready.text
        state.clear()
        ready = await intake.http.get(intake.url + "/readyz")
        assert ready.status_code == 200 and "database, docker" in ready.text


async def test_readyz_reports_a_locked_database_through_the_real_probe(tmp_path: Path) -> None:
    from agent.orchestrator.health import queue_writable
    from agent.queue import open_queue

    config = make_config(tmp_path, response_deadline=1.0)
    async with open_queue(config) as probe_queue:
        checks = {"database": queue_writable(probe_queue)}
        async with serve_intake(config, readiness=checks) as intake:
            assert (await intake.http.get(intake.url + "/readyz")).status_code == 200
            with _write_locked(config):
                answer = await intake.http.get(intake.url + "/readyz")
            assert answer.status_code == 503 and "database" in answer.text


# ---- §2 event semantics --------------------------------------------------------------------


async def test_a_redelivery_is_recognised_even_after_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    job_id, guid = new_job_id(), str(uuid.uuid4())
    async with serve_intake(config) as intake:
        assert (await intake.post(payload(job_id), delivery=guid)).status_code == 201
        done = payload(job_id, "completed", conclusion="success")
        done_guid = str(uuid.uuid4())
        assert (await intake.post(done, delivery=done_guid)).status_code == 200
        again = await intake.post(payload(job_id), delivery=guid)
        assert again.status_code == 200 and "duplicate_delivery" in again.text
    async with serve_intake(config) as restarted:  # same database file, new process state
        # Pruning keeps delivery ids for queue.retention (>= GitHub's redelivery window).
        await restarted.queue.prune(older_than=0.0)
        again = await restarted.post(done, delivery=done_guid)
        assert again.status_code == 200 and "nothing to do" in again.text
        entry = await restarted.queue.get(job_id)
        assert entry is not None and entry.state is JobState.DONE


async def test_completed_before_queued_is_never_provisioned(intake: Intake) -> None:
    job_id = new_job_id()
    done = await intake.post(payload(job_id, "completed", conclusion="cancelled"))
    assert done.status_code == 200
    late = await intake.post(payload(job_id))
    assert late.status_code == 200 and "finished" in late.text
    assert await intake.queue.claim(10, lease_seconds=60) == []
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.DONE


async def test_in_progress_before_queued_is_never_provisioned(intake: Intake) -> None:
    job_id = new_job_id()
    started = await intake.post(payload(job_id, "in_progress", runner_name="someone-else"))
    assert started.status_code == 200 and "not provisioned" in started.text
    assert (await intake.post(payload(job_id))).status_code == 200
    assert await intake.queue.claim(10, lease_seconds=60) == []


async def test_a_duplicate_queued_is_a_no_op(intake: Intake) -> None:
    job_id = new_job_id()
    assert (await intake.post(payload(job_id))).status_code == 201
    twice = await intake.post(payload(job_id))  # another GUID: GitHub sent the event twice
    assert twice.status_code == 200 and "known" in twice.text
    leases = await intake.queue.claim(10, lease_seconds=60)
    assert [lease.job_id for lease in leases] == [job_id]


async def test_a_job_waiting_for_approval_is_held_then_provisioned_once(intake: Intake) -> None:
    """GitHub's sequence (octokit queued.with-deployment, waiting): queued with status waiting,
    waiting, then queued with status queued after the approval, one job id throughout."""
    job_id = new_job_id()
    answer = await intake.post(payload(job_id, status="waiting"))
    assert answer.status_code == 202 and "approval" in answer.text
    assert (await intake.post(payload(job_id, "waiting"))).status_code == 200
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.HELD
    assert await intake.queue.claim(10, lease_seconds=60) == []
    assert (await intake.post(payload(job_id))).status_code == 201  # approved
    assert (await intake.post(payload(job_id))).status_code == 200  # sent twice: a no-op
    leases = await intake.queue.claim(10, lease_seconds=60)
    assert [lease.job_id for lease in leases] == [job_id]


async def test_a_waiting_delivery_alone_holds_the_job(intake: Intake) -> None:
    job_id = new_job_id()
    assert (await intake.post(payload(job_id, "waiting"))).status_code == 202
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.HELD


async def test_a_rejected_job_is_dropped(intake: Intake) -> None:
    job_id = new_job_id()
    await intake.post(payload(job_id, status="waiting"))
    await intake.post(payload(job_id, "completed", conclusion="failure"))
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.DONE
    assert await intake.queue.claim(10, lease_seconds=60) == []


async def test_in_progress_still_queued_without_runner_does_not_stop_provisioning(
    intake: Intake,
) -> None:
    """octokit's schema allows in_progress with status queued and no runner: not started."""
    known, unseen = new_job_id(), new_job_id()
    await intake.post(payload(known))
    for job_id in (known, unseen):
        await intake.post(payload(job_id, "in_progress", status="queued"))
    for job_id in (known, unseen):
        entry = await intake.queue.get(job_id)
        assert entry is not None and entry.state is JobState.QUEUED
    leases = await intake.queue.claim(10, lease_seconds=60)
    assert sorted(lease.job_id for lease in leases) == sorted([known, unseen])


async def test_in_progress_and_completed_reach_the_pool_manager(intake: Intake) -> None:
    job_id = new_job_id()
    await intake.post(payload(job_id))
    await intake.post(payload(job_id, "in_progress", runner_name="gantryd-h-1"))
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.RUNNING
    assert entry.runner_name == "gantryd-h-1"
    await intake.post(payload(job_id, "completed", runner_name="gantryd-h-1", conclusion="success"))
    with trio.fail_after(5):
        events = await intake.wait_events(2)
    assert [(e.action, e.runner_name) for e in events] == [
        ("in_progress", "gantryd-h-1"),
        ("completed", "gantryd-h-1"),
    ]


async def test_completed_while_queued_removes_the_job_and_tells_the_pool(intake: Intake) -> None:
    job_id = new_job_id()
    await intake.post(payload(job_id))
    cancelled = await intake.post(payload(job_id, "completed", conclusion="cancelled"))
    assert cancelled.status_code == 200
    entry = await intake.queue.get(job_id)
    assert entry is not None and entry.state is JobState.DONE
    assert entry.conclusion == "cancelled"
    with trio.fail_after(5):
        events = await intake.wait_events(1)
    assert events[0].action == "completed" and intake.events[0].runner_name is None


async def test_rerun_attempts_are_distinct_jobs(intake: Intake) -> None:
    first, rerun = new_job_id(), new_job_id()
    assert (await intake.post(payload(first, run_id=77, run_attempt=1))).status_code == 201
    await intake.post(payload(first, "completed", run_id=77, conclusion="failure"))
    assert (await intake.post(payload(rerun, run_id=77, run_attempt=2))).status_code == 201
    entry = await intake.queue.get(rerun)
    assert entry is not None and entry.state is JobState.QUEUED and entry.spec.run_attempt == 2


# ---- §3 routing and priority ---------------------------------------------------------------


async def test_routing_picks_the_closest_fitting_pool_case_insensitively(intake: Intake) -> None:
    plain, gpu = new_job_id(), new_job_id()
    await intake.post(payload(plain, labels=("Self-Hosted", "LINUX")))
    await intake.post(payload(gpu, labels=("self-hosted", "GPU")))
    plain_entry, gpu_entry = await intake.queue.get(plain), await intake.queue.get(gpu)
    assert plain_entry is not None and plain_entry.spec.pool == "default"
    assert gpu_entry is not None and gpu_entry.spec.pool == "gpu"
    assert gpu_entry.spec.priority == 5  # the pool's default priority


async def test_priority_rules_apply_first_match_wins(intake: Intake) -> None:
    release, bot, plain = new_job_id(), new_job_id(), new_job_id()
    await intake.post(payload(release, repository="octo-org/release-tools"))
    await intake.post(payload(bot, branch="dependabot/npm/x"))
    await intake.post(payload(plain))
    priorities = [(await intake.queue.get(j)) for j in (release, bot, plain)]
    assert [e.spec.priority for e in priorities if e is not None] == [50, -10, 0]
    order = [lease.job_id for lease in await intake.queue.claim(3, lease_seconds=60)]
    assert order == [release, plain, bot]


# ---- §4 durability and backpressure --------------------------------------------------------


class _Locked:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")  # holds the write lock: other writers wait

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class _write_locked:
    """Another process's write transaction on the queue file, for the length of a block."""

    def __init__(self, config: Config) -> None:
        self._path = config.queue_path

    def __enter__(self) -> _Locked:
        self._lock = _Locked(self._path)
        return self._lock

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


async def test_503_within_the_deadline_when_the_queue_cannot_commit(tmp_path: Path) -> None:
    config = make_config(tmp_path, response_deadline=1.0)
    async with serve_intake(config) as intake:
        job_id, guid = new_job_id(), str(uuid.uuid4())
        with _write_locked(config):
            refused = await intake.post(payload(job_id), delivery=guid)
        assert refused.status_code == 503 and "reconciler" in refused.text
        # GitHub's redelivery (same GUID) after the lock is gone: served exactly once, whether
        # the refused write committed late (duplicate) or not at all (created now).
        for _ in range(100):  # as an operator redelivering by hand until it is accepted
            again = await intake.post(payload(job_id), delivery=guid)
            if again.status_code != 503:
                break
            await trio.sleep(0.1)
        assert again.status_code in (200, 201)
        leases = await intake.queue.claim(10, lease_seconds=60)
        assert [lease.job_id for lease in leases] == [job_id]


# ---- fuzzing (make fuzz: GANTRYD_FUZZ_EXAMPLES=20000) --------------------------------------

_headers = st.dictionaries(
    st.sampled_from(
        [
            "Content-Type",
            "X-GitHub-Event",
            "X-GitHub-Delivery",
            "X-Hub-Signature-256",
            "Content-Encoding",
            "X-Hub-Signature",
        ]
    ),
    # h11 (the client) refuses values with surrounding blanks before they reach the server.
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


def _mutated_payload(draw: st.DrawFn) -> dict[str, object]:
    body = payload(draw(st.integers(min_value=-(2**65), max_value=2**65)))
    job = body["workflow_job"]
    assert isinstance(job, dict)
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from([body, job]))
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(_json_values)
    body["action"] = draw(st.sampled_from(["queued", "waiting", "in_progress", "completed", "x"]))
    return body


mutated_payloads = st.composite(_mutated_payload)


class _SyncIntake:
    """The intake served by a trio loop on a thread, for hypothesis's synchronous tests."""

    def __init__(self, tmp: Path) -> None:
        self.config = make_config(tmp)
        self._ready = trio.Event()
        self._stop: trio.Event | None = None
        self.intake: Intake | None = None
        self.client: httpx.Client  # set by the fixture: one keep-alive client for all examples

    async def serve(self, started: list[trio.lowlevel.TrioToken]) -> None:
        async with serve_intake(self.config) as intake:
            self.intake = intake
            self._stop = trio.Event()
            started.append(trio.lowlevel.current_trio_token())
            await self._stop.wait()

    def stop(self) -> None:
        assert self._stop is not None
        self._stop.set()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_SyncIntake, object]]:
    import threading

    holder = _SyncIntake(tmp_path_factory.mktemp("fuzz"))
    tokens: list[trio.lowlevel.TrioToken] = []
    thread = threading.Thread(target=trio.run, args=(holder.serve, tokens), daemon=True)
    thread.start()
    while not tokens:
        thread.join(0.01)
    with httpx.Client(trust_env=False, timeout=30) as holder.client:
        yield holder, tokens[0]
    trio.from_thread.run_sync(holder.stop, trio_token=tokens[0])
    thread.join(30)


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    body=st.binary(max_size=2048) | mutated_payloads().map(json.dumps).map(str.encode),
    headers=_headers,
)
def test_fuzz_unsigned_requests_never_crash_or_enqueue(
    served: tuple[_SyncIntake, trio.lowlevel.TrioToken], body: bytes, headers: dict[str, str]
) -> None:
    holder, token = served
    assert holder.intake is not None
    valid = {sign(body), sign(body, NEXT_SECRET)}
    headers = {k: v for k, v in headers.items() if v not in valid}
    answer = holder.client.post(holder.intake.url + "/webhook", content=body, headers=headers)
    assert answer.status_code in (401, 413), answer.text
    counts = trio.from_thread.run(holder.intake.queue.counts, trio_token=token)
    assert sum(counts.by_state.values()) == 0


@FUZZ
@given(body=mutated_payloads(), form=st.booleans(), event=st.sampled_from(["workflow_job", "ping"]))
def test_fuzz_signed_payloads_get_a_truthful_answer(
    served: tuple[_SyncIntake, trio.lowlevel.TrioToken],
    body: dict[str, object],
    form: bool,
    event: str,
) -> None:
    holder, token = served
    assert holder.intake is not None
    raw = json.dumps(body).encode()
    content_type = "application/json"
    if form:
        from urllib.parse import urlencode

        raw = urlencode({"payload": raw.decode()}).encode()
        content_type = "application/x-www-form-urlencoded"
    answer = holder.client.post(
        holder.intake.url + "/webhook",
        content=raw,
        headers={
            "Content-Type": content_type,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(raw),
        },
    )
    assert answer.status_code in (200, 201, 202, 400), answer.text
    if answer.status_code == 201:
        job = body["workflow_job"]
        assert isinstance(job, dict)
        entry = trio.from_thread.run(holder.intake.queue.get, job["id"], trio_token=token)
        assert entry is not None and dataclasses.is_dataclass(entry)


@FUZZ
@given(
    order=st.permutations(["queued", "in_progress", "completed"]),
    repeats=st.lists(st.sampled_from(["queued", "in_progress", "completed"]), max_size=3),
)
def test_fuzz_reordered_and_repeated_events_serve_a_job_at_most_once(
    served: tuple[_SyncIntake, trio.lowlevel.TrioToken], order: list[str], repeats: list[str]
) -> None:
    holder, token = served
    assert holder.intake is not None
    job_id = new_job_id()
    created = 0
    for position, action in enumerate([*order, *repeats]):
        body = json.dumps(payload(job_id, action, runner_name="r-1", conclusion="success")).encode()
        answer = holder.client.post(
            holder.intake.url + "/webhook",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "workflow_job",
                "X-GitHub-Delivery": f"{job_id}-{action}",  # a repeat is a redelivery
                "X-Hub-Signature-256": sign(body),
            },
        )
        assert answer.status_code in (200, 201), answer.text
        created += answer.status_code == 201
        assert answer.status_code != 201 or position == 0  # queued only counts when first
    assert created == (order[0] == "queued")
    entry = trio.from_thread.run(holder.intake.queue.get, job_id, trio_token=token)
    assert entry is not None and entry.state is JobState.DONE


async def test_a_repository_name_github_never_gives_is_refused_and_never_queued(
    intake: Intake,
) -> None:
    """Issue 13 §7: a signed payload whose ``repository.full_name`` climbs out of ``/repos``
    is a 400 naming the field; nothing is queued, so no REST path is ever built from it."""
    job_id = new_job_id()
    evil = payload(job_id)
    evil["repository"]["full_name"] = "../../../orgs/evil"
    answer = await intake.post(evil)
    assert answer.status_code == 400
    assert "repository.full_name" in answer.text and "not a valid GitHub" in answer.text
    org = payload(new_job_id())
    org["organization"] = {"login": "../evil"}
    refused = await intake.post(org)
    assert refused.status_code == 400 and "organization.login" in refused.text
    assert await intake.queue.get(job_id) is None
    assert intake.events == []


async def test_a_burst_of_unsigned_requests_is_counted_and_logged_once(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 §8: 50 unsigned requests are all counted (the metric's source) but write one
    WARNING line, not 50."""
    with caplog.at_level(logging.WARNING, logger="agent.orchestrator.webhook"):
        for _ in range(50):
            assert (await intake.post(payload(new_job_id()), secret=None)).status_code == 401
    lines = [r for r in caplog.records if "X-Hub-Signature-256" in r.getMessage()]
    assert len(lines) == 1 and "rejected 1 request(s)" in lines[0].getMessage()
    rejected = sum(n for k, n in intake.app.stats.received.items() if k[2] == "rejected")
    assert rejected == 50


def test_rejections_are_logged_at_most_once_per_interval_with_the_count() -> None:
    rejections = RejectionLog(interval=60.0)
    assert rejections.note(0.0) == 1
    assert [rejections.note(t) for t in (1.0, 2.0, 59.9)] == [None, None, None]
    assert rejections.note(60.0) == 4  # three held back and this one
    assert rejections.note(61.0) is None
    assert rejections.note(500.0) == 2
