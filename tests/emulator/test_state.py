"""GitHub's rules in `Emulator` (agent/emulator/state.py), through its Python API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Conclusion, Emulator, JobStatus
from agent.emulator.errors import GitHubError
from agent.emulator.models import Runner, RunnerScope

from .conftest import APP_ID, INSTALLATIONS, Clock, app_jwt

REPO_APP = RunnerScope(repository="acme/app")
REPO_LIB = RunnerScope(repository="acme/lib")
ORG_ACME = RunnerScope(organization="acme")
LABELS = ["self-hosted", "linux", "x64", "gantryd"]


def register(
    emulator: Emulator, scope: RunnerScope, name: str, labels: list[str] = LABELS
) -> Runner:
    runner, _ = emulator.generate_jitconfig(
        scope, {"name": name, "runner_group_id": 1, "labels": labels}
    )
    return runner


async def take_job(emulator: Emulator, runner: Runner) -> int:
    """Connect ``runner`` and return the id of the job the emulator gives it."""
    session = emulator.open_session(runner.secret)
    with trio.fail_after(5):
        job = await emulator.wait_message(runner.secret, session.id)
    return job.id


# ---- tokens ----------------------------------------------------------------------------


def test_token_expires_with_the_clock(
    emulator: Emulator, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    token = emulator.issue_token(app_jwt(app_key, clock.now), 11)
    assert token.expires_at == pytest.approx(clock.now + 3600)
    emulator.authorize(token.token, permission=("administration", "write"), repository="acme/app")
    clock.now += 3600
    with pytest.raises(GitHubError) as caught:
        emulator.authorize(
            token.token, permission=("administration", "write"), repository="acme/app"
        )
    assert (caught.value.status, caught.value.message) == (401, "Bad credentials")


def test_unknown_installation_is_404(
    emulator: Emulator, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    with pytest.raises(GitHubError) as caught:
        emulator.issue_token(app_jwt(app_key, clock.now), 99)
    assert caught.value.status == 404


def test_token_reaches_only_its_installation(
    emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    token = token_for(11)
    with pytest.raises(GitHubError) as caught:
        emulator.authorize(token, permission=("administration", "write"), repository="other/tool")
    assert caught.value.status == 404  # a private repository the token cannot see
    with pytest.raises(GitHubError) as caught:
        emulator.authorize(
            token, permission=("organization_self_hosted_runners", "write"), org="other"
        )
    assert caught.value.status == 403


def test_narrowed_token(emulator: Emulator, app_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    jwt = app_jwt(app_key, clock.now)
    token = emulator.issue_token(
        jwt, 11, {"repositories": ["lib"], "permissions": {"actions": "read"}}
    )
    emulator.authorize(token.token, permission=("actions", "read"), repository="acme/lib")
    with pytest.raises(GitHubError) as caught:
        emulator.authorize(token.token, permission=("actions", "read"), repository="acme/app")
    assert caught.value.status == 404
    with pytest.raises(GitHubError) as caught:
        emulator.authorize(
            token.token, permission=("administration", "write"), repository="acme/lib"
        )
    assert caught.value.status == 403
    assert caught.value.headers == {"X-Accepted-GitHub-Permissions": "administration=write"}
    for bad in ({"repositories": ["nope"]}, {"permissions": {"administration": "admin"}}):
        with pytest.raises(GitHubError) as caught:
            emulator.issue_token(jwt, 11, bad)
        assert caught.value.status == 422


def test_missing_permission_names_it(app_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    emulator = Emulator(
        app_id=APP_ID,
        app_public_key=app_key.public_key(),
        installations=INSTALLATIONS,
        clock=clock,
        permissions={11: {"actions": "read", "metadata": "read"}},
    )
    token = emulator.issue_token(app_jwt(app_key, clock.now), 11).token
    with pytest.raises(GitHubError) as caught:
        emulator.authorize(token, permission=("administration", "write"), repository="acme/app")
    assert caught.value.status == 403
    assert caught.value.message == "Resource not accessible by integration"
    assert caught.value.headers["X-Accepted-GitHub-Permissions"] == "administration=write"


def test_installation_must_be_on_one_account(app_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="one owner"):
        Emulator(app_id=1, app_public_key=app_key.public_key(), installations={1: ["a/x", "b/y"]})


# ---- runners ---------------------------------------------------------------------------


def test_duplicate_name_in_scope_is_409(emulator: Emulator) -> None:
    register(emulator, REPO_APP, "r1")
    with pytest.raises(GitHubError) as caught:
        register(emulator, REPO_APP, "r1")
    assert caught.value.status == 409
    assert caught.value.message == "Already exists - A runner with the name r1 already exists."
    register(emulator, REPO_LIB, "r1")  # another scope: fine


def test_unknown_runner_group_is_404(emulator: Emulator) -> None:
    with pytest.raises(GitHubError) as caught:
        emulator.generate_jitconfig(REPO_APP, {"name": "r", "runner_group_id": 7, "labels": ["x"]})
    assert caught.value.status == 404
    group = emulator.add_runner_group("acme", "gantryd")
    emulator.generate_jitconfig(
        ORG_ACME, {"name": "r", "runner_group_id": group.id, "labels": ["x"]}
    )


async def test_delete_busy_runner_is_422_then_runner_goes_after_its_job(emulator: Emulator) -> None:
    runner = register(emulator, REPO_APP, "busy-one")
    job = emulator.create_job("acme/app", ["self-hosted", "gantryd"], "true")
    assert await take_job(emulator, runner) == job.id
    with pytest.raises(GitHubError) as caught:
        emulator.delete_runner(REPO_APP, runner.id)
    assert caught.value.status == 422
    assert caught.value.message == 'Bad request - Runner "busy-one" is still running a job"'
    emulator.report_result(runner.secret, job.id, 0, b"ok\n")
    assert emulator.runners(REPO_APP) == []  # a JIT runner runs one job only
    with pytest.raises(GitHubError) as caught:
        emulator.delete_runner(REPO_APP, runner.id)
    assert caught.value.status == 404


async def test_idle_runner_can_be_deleted_and_its_poll_ends(emulator: Emulator) -> None:
    runner = register(emulator, REPO_APP, "idle")
    session = emulator.open_session(runner.secret)
    async with trio.open_nursery() as nursery:

        async def poll() -> None:
            with pytest.raises(GitHubError):
                await emulator.wait_message(runner.secret, session.id)

        nursery.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        emulator.delete_runner(REPO_APP, runner.id)


def test_second_session_is_a_conflict(emulator: Emulator) -> None:
    runner = register(emulator, REPO_APP, "r")
    emulator.open_session(runner.secret)
    with pytest.raises(GitHubError) as caught:
        emulator.open_session(runner.secret)
    assert caught.value.status == 409


def test_runner_that_never_connects_stays_offline(emulator: Emulator, clock: Clock) -> None:
    runner = register(emulator, REPO_APP, "r")
    emulator.create_job("acme/app", ["gantryd"], "true")
    assert not emulator.is_online(runner)
    assert runner.job_id is None
    emulator.open_session(runner.secret)
    assert runner.job_id is not None


def test_session_without_polls_goes_offline(emulator: Emulator, clock: Clock) -> None:
    runner = register(emulator, REPO_APP, "r")
    emulator.open_session(runner.secret)
    assert emulator.is_online(runner)
    clock.now += 61
    assert not emulator.is_online(runner)
    emulator.create_job("acme/app", ["gantryd"], "true")
    assert runner.job_id is None


# ---- assignment ------------------------------------------------------------------------


async def test_labels_are_a_case_insensitive_superset(emulator: Emulator) -> None:
    runner = register(emulator, REPO_APP, "r", ["self-hosted", "Linux", "X64"])
    emulator.open_session(runner.secret)
    wider = emulator.create_job("acme/app", ["self-hosted", "linux", "gpu"], "true")
    assert wider.status is JobStatus.QUEUED  # "gpu" is missing
    fits = emulator.create_job("acme/app", ["SELF-HOSTED", "x64"], "true")
    assert fits.status is JobStatus.IN_PROGRESS
    assert (fits.runner_id, fits.runner_name, fits.runner_group_id) == (runner.id, "r", 1)
    assert fits.runner_group_name == "Default"


async def test_repository_runner_serves_its_repository_only(emulator: Emulator) -> None:
    lib_runner = register(emulator, REPO_LIB, "lib-runner")
    emulator.open_session(lib_runner.secret)
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    assert job.status is JobStatus.QUEUED
    assert lib_runner.job_id is None
    app_runner = register(emulator, REPO_APP, "app-runner")
    assert await take_job(emulator, app_runner) == job.id


async def test_org_runner_serves_any_repository_of_its_org(emulator: Emulator) -> None:
    runner = register(emulator, ORG_ACME, "org-runner")
    job = emulator.create_job("acme/lib", ["gantryd"], "true")
    assert await take_job(emulator, runner) == job.id
    other = register(emulator, ORG_ACME, "org-runner-2")
    emulator.open_session(other.secret)
    foreign = emulator.create_job("other/tool", ["gantryd"], "true")
    assert foreign.status is JobStatus.QUEUED


async def test_runner_steals_the_oldest_matching_job(emulator: Emulator) -> None:
    # gantryd makes runner B for job 2, but B connects first and takes job 1: GitHub does not
    # bind a JIT runner to a job (docs/design.md §1).
    first = emulator.create_job("acme/app", ["gantryd"], "true")
    second = emulator.create_job("acme/app", ["gantryd"], "true")
    register(emulator, REPO_APP, "made-for-first")
    made_for_second = register(emulator, REPO_APP, "made-for-second")
    assert await take_job(emulator, made_for_second) == first.id
    assert emulator.job(first.id).runner_name == "made-for-second"
    assert second.status is JobStatus.QUEUED


async def test_result_completes_the_job(emulator: Emulator) -> None:
    runner = register(emulator, REPO_APP, "r")
    job = emulator.create_job("acme/app", ["gantryd"], "exit 3")
    await take_job(emulator, runner)
    async with trio.open_nursery() as nursery:

        async def finish() -> None:
            await trio.testing.wait_all_tasks_blocked()
            emulator.report_result(runner.secret, job.id, 3, b"boom\n")

        nursery.start_soon(finish)
        with trio.fail_after(5):
            done = await emulator.wait_job(job.id, JobStatus.COMPLETED)
    assert (done.conclusion, done.exit_code, done.log) == (Conclusion.FAILURE, 3, b"boom\n")


def test_cancel_queued_job(emulator: Emulator) -> None:
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    emulator.cancel_job(job.id)
    assert (job.status, job.conclusion, job.runner_id) == (
        JobStatus.COMPLETED,
        Conclusion.CANCELLED,
        None,
    )
    with pytest.raises(GitHubError) as caught:
        emulator.cancel_job(job.id)
    assert caught.value.status == 409
