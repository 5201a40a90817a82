"""sweep_offline_runners against the emulator: only this host's offline, untracked runners go."""

from __future__ import annotations

from agent.emulator import Emulator
from agent.github.client import GitHubClient, RunnerTarget
from agent.github.runners import (
    MAX_RUNNER_NAME,
    RUNNER_ID_HEX,
    is_ours,
    name_head,
    sweep_offline_runners,
)

APP = RunnerTarget(repository="acme/app")
LIB = RunnerTarget(repository="acme/lib")


def test_is_ours() -> None:
    assert is_ours("gantryd-build-1-0a1b2c3d", "gantryd", "build-1")
    assert not is_ours("gantryd-build-1-x-0a1b2c3d", "gantryd", "build")  # host "build-1-x"
    assert not is_ours("gantryd-build-2-0a1b2c3d", "gantryd", "build")  # host "build-2"
    assert not is_ours("gantryd-build-runner01", "gantryd", "build")
    assert not is_ours("gantryd-build-1-", "gantryd", "build-1")
    assert not is_ours("other-build-1-0a1b2c3d", "gantryd", "build-1")


async def test_sweep_deletes_only_leftovers_of_this_host(
    github: GitHubClient, emulator: Emulator
) -> None:
    async def register(target: RunnerTarget, name: str) -> int:
        jit = await github.generate_jitconfig(
            target, name=name, labels=("self-hosted",), runner_group_id=1, installation_id=None
        )
        return jit.runner_id

    await register(APP, "gantryd-build-1-aaaa0001")  # leftover: goes
    await register(LIB, "gantryd-build-1-aaaa0002")  # leftover in another repository: goes
    await register(APP, "gantryd-build-1-bbbb0001")  # tracked (being started): stays
    await register(APP, "gantryd-build-2-cccc0001")  # another host's: stays
    await register(APP, "hand-made-runner")  # not gantryd's: stays
    busy = await register(APP, "gantryd-build-1-dddd0001")  # running a job: stays
    job = emulator.create_job("acme/app", ["self-hosted"], "true")
    runner = emulator.runner(emulator.scope_for(repository="acme/app"), busy)
    emulator._assign(job, runner)

    result = await sweep_offline_runners(
        github, [APP, LIB], "gantryd", "build-1", tracks={"gantryd-build-1-bbbb0001"}.__contains__
    )
    assert sorted(result.deleted) == ["gantryd-build-1-aaaa0001", "gantryd-build-1-aaaa0002"]
    assert result.errors == ()
    left = {r.name for r in emulator.runners(emulator.scope_for(repository="acme/app"))}
    assert left == {
        "gantryd-build-1-bbbb0001",
        "gantryd-build-2-cccc0001",
        "hand-made-runner",
        "gantryd-build-1-dddd0001",
    }


async def test_sweep_reports_errors_and_carries_on(
    github: GitHubClient, emulator: Emulator
) -> None:
    emulator._installations[12].permissions.pop("administration")
    await github.generate_jitconfig(
        APP, name="gantryd-h-1", labels=("x",), runner_group_id=1, installation_id=None
    )
    other = RunnerTarget(repository="other/tool")
    result = await sweep_offline_runners(
        github, [other, APP], "gantryd", "h", tracks=lambda name: False
    )
    assert result.deleted == ("gantryd-h-1",)
    assert len(result.errors) == 1 and "administration: read" in result.errors[0]


def test_long_prefix_and_instance_give_names_within_githubs_limit() -> None:
    prefix, instance = "p" * 32, "host-" + "i" * 27
    head = name_head(prefix, instance)
    assert len(head) + RUNNER_ID_HEX <= MAX_RUNNER_NAME
    assert is_ours(head + "0a1b2c3d", prefix, instance)
    # Another host whose long name differs only at its end keeps a head of its own.
    other = name_head(prefix, "host-" + "i" * 26 + "j")
    assert other != head and not is_ours(other + "0a1b2c3d", prefix, instance)
    assert name_head("gantryd", "build") == "gantryd-build-"  # short names are unchanged


async def test_a_fleet_sweep_takes_dead_hosts_leftovers_and_never_a_live_hosts(
    github: GitHubClient, emulator: Emulator
) -> None:
    """The sweep lease holder (build-1) also sweeps host build-3, dead (no heartbeat for
    DEAD_AFTER); build-2 is alive, and "build-3-x" is another host whose name build-3 prefixes."""

    async def register(name: str) -> int:
        jit = await github.generate_jitconfig(
            APP, name=name, labels=("self-hosted",), runner_group_id=1, installation_id=None
        )
        return jit.runner_id

    await register("gantryd-build-1-aaaa0001")  # its own leftover: goes
    await register("gantryd-build-3-aaaa0003")  # the dead host's leftover: goes
    await register("gantryd-build-2-aaaa0002")  # a live host's, offline (starting): stays
    await register("gantryd-build-3-x-aaaa0004")  # host "build-3-x", alive: stays
    busy = await register("gantryd-build-3-dddd0003")  # the dead host's, running a job: stays
    job = emulator.create_job("acme/app", ["self-hosted"], "true")
    emulator._assign(job, emulator.runner(emulator.scope_for(repository="acme/app"), busy))

    result = await sweep_offline_runners(
        github, [APP], "gantryd", "build-1", tracks=lambda _: False, dead={"build-3"}
    )
    assert sorted(result.deleted) == ["gantryd-build-1-aaaa0001", "gantryd-build-3-aaaa0003"]
    left = {r.name for r in emulator.runners(emulator.scope_for(repository="acme/app"))}
    assert left == {
        "gantryd-build-2-aaaa0002",
        "gantryd-build-3-x-aaaa0004",
        "gantryd-build-3-dddd0003",
    }
