"""The scale-set client (agent/github/scaleset.py) against the emulator over loopback HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import docker
import docker.errors
import pytest
import trio

from agent.emulator import Conclusion, Emulator, JobStatus
from agent.github.client import DeleteOutcome, GitHubClient, RunnerTarget
from agent.github.scaleset import ScaleSetClient
from agent.github.scaleset_answers import SessionConflict, SessionGone, TokenRefused
from agent.github.scaleset_types import (
    JobMessageKind,
    MessageSession,
    ScaleSetMessage,
    ScaleSetSpec,
)
from tests.emulator_clock import Clock

ACME = RunnerTarget(organization="acme")
SPEC = ScaleSetSpec(name="gantry-linux", labels=("gantry",))


@pytest.fixture
def quick(emulator: Emulator) -> Emulator:
    emulator.actions.settings.poll_timeout = 0.3
    return emulator


@pytest.fixture
def scalesets(github: GitHubClient, base_url: str, clock: Clock, quick: Emulator) -> ScaleSetClient:
    return ScaleSetClient(github, ACME, github_url=base_url, clock=clock)


@pytest.fixture
async def session(scalesets: ScaleSetClient) -> AsyncIterator[MessageSession]:
    scale_set = await scalesets.ensure_scale_set(SPEC)
    opened = await scalesets.create_session(scale_set.id, "host-1")
    yield opened
    with contextlib.suppress(SessionGone):
        await scalesets.delete_session(opened)


async def next_message(
    client: ScaleSetClient, session: MessageSession, last: int, capacity: int = 4
) -> ScaleSetMessage:
    """The next message after ``last``, waiting through 202s (bounded)."""
    with trio.fail_after(60):
        while (message := await client.get_message(session, last, capacity)) is None:
            pass
    return message


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    started: list[str] = []
    yield started
    for container_id in started:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(container_id).remove(force=True)


@pytest.mark.docker
async def test_round_trip_with_the_stand_in_runner(
    scalesets: ScaleSetClient,
    session: MessageSession,
    emulator: Emulator,
    docker_client: docker.DockerClient,
    runner_image: str,
    containers: list[str],
) -> None:
    assert session.statistics.total_assigned_jobs == 0
    assert await scalesets.get_message(session, 0, 4) is None  # 202 after the poll timeout

    job = emulator.create_job("acme/app", ["gantry"], "echo built\n")
    message = await next_message(scalesets, session, 0)
    [available] = message.of_kind(JobMessageKind.AVAILABLE)
    assert available.repository == "acme/app" and available.labels == ("gantry",)
    assert message.statistics.total_available_jobs == 1
    await scalesets.delete_message(session, message.id)
    last = message.id

    granted = await scalesets.acquire_jobs(session, [available.runner_request_id])
    assert granted == [available.runner_request_id]
    message = await next_message(scalesets, session, last)
    assert [j.kind for j in message.jobs] == [JobMessageKind.ASSIGNED]
    assert message.statistics.total_assigned_jobs == 1  # what a listener scales on
    await scalesets.delete_message(session, message.id)
    last = message.id

    config = await scalesets.generate_jit_config(session.scale_set_id, "gantry-linux-r1")

    def start() -> None:
        container = docker_client.containers.run(
            runner_image,
            ["/home/runner/run.sh"],
            detach=True,
            network_mode="host",
            read_only=True,
            tmpfs={"/tmp": "size=64m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user="1001",
            environment={"ACTIONS_RUNNER_INPUT_JITCONFIG": config.encoded.reveal()},
            labels={"io.gantryd.test": "true"},
        )
        containers.append(str(container.id))

    await trio.to_thread.run_sync(start)
    seen: list[JobMessageKind] = []
    while JobMessageKind.COMPLETED not in seen:
        message = await next_message(scalesets, session, last)
        for event in message.jobs:
            seen.append(event.kind)
            assert event.runner_id == config.runner_id
            assert event.runner_name == "gantry-linux-r1"
            if event.kind is JobMessageKind.COMPLETED:
                assert event.result == "succeeded"
        await scalesets.delete_message(session, message.id)
        last = message.id
    assert seen == [JobMessageKind.STARTED, JobMessageKind.COMPLETED]
    assert (job.status, job.conclusion) == (JobStatus.COMPLETED, Conclusion.SUCCESS)
    assert b"built" in job.log
    assert await scalesets.get_message(session, last, 4) is None  # all acknowledged


async def test_ensure_scale_set_finds_creates_and_updates(
    scalesets: ScaleSetClient, emulator: Emulator
) -> None:
    created = await scalesets.ensure_scale_set(SPEC)
    assert created.labels == ("gantry-linux", "gantry")
    assert created.runner_group_name == "Default" and created.disable_update
    assert await scalesets.ensure_scale_set(SPEC) == created  # idempotent
    reloaded = await scalesets.ensure_scale_set(ScaleSetSpec(name="gantry-linux", labels=("big",)))
    assert reloaded.id == created.id
    assert reloaded.labels == ("gantry-linux", "big")
    emulator.add_runner_group("acme", "Builders")
    other = await scalesets.ensure_scale_set(ScaleSetSpec(name="b", runner_group="builders"))
    assert other.runner_group_name == "Builders"
    assert await scalesets.get_scale_set("nope", 1) is None


async def test_unacknowledged_messages_are_redelivered(
    scalesets: ScaleSetClient, session: MessageSession, emulator: Emulator
) -> None:
    emulator.create_job("acme/app", ["gantry"], "true")
    first = await next_message(scalesets, session, 0)
    again = await next_message(scalesets, session, 0)
    assert (again.id, again.jobs) == (first.id, first.jobs)
    await scalesets.delete_message(session, first.id)
    assert await scalesets.get_message(session, 0, 4) is None


async def test_second_session_is_a_conflict(
    scalesets: ScaleSetClient, session: MessageSession
) -> None:
    with pytest.raises(SessionConflict) as caught:
        await scalesets.create_session(session.scale_set_id, "host-2")
    assert caught.value.status == 409
    assert "already has an active session for owner host-1" in str(caught.value)
    assert caught.value.activity_id
    await scalesets.delete_session(session)
    replacement = await scalesets.create_session(session.scale_set_id, "host-2")
    await scalesets.delete_session(replacement)
    await scalesets.delete_session(replacement)  # already closed: no error


async def test_expired_queue_token_is_refreshed_once(
    scalesets: ScaleSetClient, session: MessageSession, emulator: Emulator
) -> None:
    emulator.create_job("acme/app", ["gantry"], "true")
    before = session.queue_token
    emulator.actions.expire_queue_tokens()
    message = await next_message(scalesets, session, 0)
    assert session.queue_token is not before  # refreshed in place, then the poll retried
    emulator.actions.expire_queue_tokens()
    await scalesets.delete_message(session, message.id)

    emulator.actions.settings.queue_token_lifetime = 0.0  # every new token is born expired
    emulator.actions.expire_queue_tokens()
    with pytest.raises(TokenRefused):
        await scalesets.get_message(session, 0, 4)


async def test_evicted_session_surfaces_as_gone(
    scalesets: ScaleSetClient, session: MessageSession, emulator: Emulator
) -> None:
    emulator.actions.evict_sessions()
    with pytest.raises(SessionGone):
        await scalesets.get_message(session, 0, 4)
    reopened = await scalesets.create_session(session.scale_set_id, "host-1")
    assert reopened.id != session.id


async def test_admin_token_is_renewed_when_refused_and_before_expiry(
    scalesets: ScaleSetClient, emulator: Emulator, clock: Clock
) -> None:
    created = await scalesets.ensure_scale_set(SPEC)
    assert emulator.actions.registrations == 1
    emulator.actions.expire_admin_tokens()  # early: the 401 path
    assert (await scalesets.get_scale_set_by_id(created.id)).id == created.id
    assert emulator.actions.registrations == 2
    assert (await scalesets.get_scale_set_by_id(created.id)).id == created.id
    assert emulator.actions.registrations == 2  # cached while valid
    # Within the last minute of its life the token is renewed before use (it still works).
    clock.offset += emulator.actions.settings.admin_token_lifetime - 30
    assert (await scalesets.get_scale_set_by_id(created.id)).id == created.id
    assert emulator.actions.registrations == 3


@pytest.mark.parametrize("bom", [True, False])
async def test_bom_prefixed_bodies_are_parsed(
    scalesets: ScaleSetClient, emulator: Emulator, bom: bool
) -> None:
    emulator.actions.settings.bom_bodies = bom  # runner-registration has a BOM either way
    created = await scalesets.ensure_scale_set(SPEC)
    opened = await scalesets.create_session(created.id, "host-1")
    assert opened.scale_set.id == created.id


async def test_runners_and_their_removal(
    scalesets: ScaleSetClient, session: MessageSession, emulator: Emulator
) -> None:
    config = await scalesets.generate_jit_config(session.scale_set_id, "r1")
    found = await scalesets.get_runner(config.runner_id)
    assert found is not None and found.scale_set_id == session.scale_set_id
    assert await scalesets.get_runner_by_name("r1") == found
    runner = emulator.runner(emulator.scope_for(org="acme"), config.runner_id)
    emulator.open_session(runner.secret)
    emulator.create_job("acme/lib", ["gantry-linux"], "true")
    message = await next_message(scalesets, session, 0)
    await scalesets.acquire_jobs(session, [j.runner_request_id for j in message.jobs])
    assert await scalesets.delete_runner(config.runner_id) is DeleteOutcome.BUSY
    idle = await scalesets.generate_jit_config(session.scale_set_id, "r2")
    assert await scalesets.delete_runner(idle.runner_id) is DeleteOutcome.DELETED
    assert await scalesets.delete_runner(idle.runner_id) is DeleteOutcome.NOT_FOUND
    assert await scalesets.get_runner(idle.runner_id) is None


async def test_personal_token_and_repository_scope(
    token_github: GitHubClient, base_url: str, clock: Clock, quick: Emulator
) -> None:
    client = ScaleSetClient(
        token_github, RunnerTarget(repository="acme/app"), github_url=base_url, clock=clock
    )
    assert client.config_url == f"{base_url}/acme/app"
    created = await client.ensure_scale_set(SPEC)
    assert created.runner_group_id == 1
    opened = await client.create_session(created.id, "host-1")
    assert await client.get_message(opened, 0, 1) is None
