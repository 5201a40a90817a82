"""``docker = "dind"`` on the real Engine: a runner with a Docker daemon of its own.

The sidecar runs the locally built daemon image (images/dind: Debian's docker.io in a
debootstrap'd tree); the runner is the official-like stand-in, whose Listener performs a
``container:`` job as the official Worker does (images/official-like-runner). Images the jobs
need come from a registry on 127.0.0.1 (Debian's docker-registry), which the inner daemon reaches
because it shares the runner's network namespace (``network = "host"`` here). The inner daemon
runs with ``--bridge=none --iptables=false`` and every job container with ``--network none``:
no address outside loopback is used.

The development machine's Engine cannot grant ``--privileged`` (its dockerd lacks
CAP_SYS_RESOURCE: "unable to apply caps"), so the working pair runs with ``docker_privileged =
false``; the privileged path is checked for what the Engine does with it: the job runs where
dockerd holds every capability, else it is the job's infrastructure failure with the reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import trio

from agent.container.dind import ROLE_LABEL, SIDECAR_ROLE, volume_names
from agent.container.lifecycle import Outcome
from agent.queue.base import JobState
from tests.conftest import managed_containers, remove_managed
from tests.container.stack import ROOT, Stack, pool_stack, wait_state

pytestmark = pytest.mark.docker
DIND_IMAGE = "gantryd/test-dind:latest"
JOB_LABELS = ["self-hosted", "linux"]


@pytest.fixture(scope="session")
def dind_image(docker_client: docker.DockerClient) -> str:
    subprocess.run(["bash", str(ROOT / "images/dind/build.sh")], check=True, capture_output=True)
    docker_client.images.get(DIND_IMAGE)
    return DIND_IMAGE


@pytest.fixture(scope="module")
def busybox_image(registry: str, runner_image: str, docker_client: docker.DockerClient) -> str:
    """A FROM-scratch static busybox image on the local registry (for the inner daemon)."""
    image = f"{registry}/gantryd/busybox:dind-test"
    docker_client.images.get(runner_image).tag(image)
    for line in docker_client.images.push(image, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(image)
    return image


def _pool(official_image: str, dind_image: str, **extra: Any) -> dict[str, Any]:
    return {
        "image": official_image,
        "memory": "256MiB",
        "docker": "dind",
        "allow_privileged_sidecar": True,
        "docker_image": dind_image,
        "docker_privileged": False,
        "docker_memory": "512MiB",
        "docker_pids_limit": 512,
        **extra,
    }


def _leftovers(client: docker.DockerClient, instance: str) -> Mapping[str, list[str]]:
    label = f"io.gantryd.instance={instance}"
    return {
        "containers": managed_containers(client, instance),
        "volumes": [v.name for v in client.volumes.list(filters={"label": label})],
        "networks": [n.name for n in client.networks.list(filters={"label": label})],
    }


@pytest.fixture
def cleanup(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Instances whose leftovers are removed after the test (containers, then volumes)."""
    instances: list[str] = []
    yield instances
    for instance in instances:
        remove_managed(docker_client, instance)
        label = f"io.gantryd.instance={instance}"
        for volume in docker_client.volumes.list(filters={"label": label}):
            volume.remove(force=True)


def _assert_strict(runner: dict[str, Any], sidecar_id: str) -> None:
    """The runner container passes the strict profile's inspect checks
    (tests/container/test_security.py); only its network is its sidecar's."""
    host, config = runner["HostConfig"], runner["Config"]
    assert config["User"] == "1001"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Privileged"] is False
    assert host["PidMode"] == "" and host["IpcMode"] in ("private", "")
    assert host["Memory"] == 256 * 1024 * 1024 == host["MemorySwap"]
    assert host["Init"] is True and host["ReadonlyRootfs"] is True
    assert not host.get("Binds") and not host["Devices"]
    assert host["NetworkMode"] == "host"
    mounts = {m["Destination"]: m for m in runner["Mounts"]}
    assert all(m["Type"] == "volume" for m in mounts.values())  # no host path, no host socket
    assert "/var/run/docker.sock" not in mounts
    assert set(mounts) == {
        "/home/runner",
        "/home/runner/_work",
        "/home/runner/externals",
        "/run/gantryd-dind",
    }
    assert runner["Config"]["Env"].count("DOCKER_HOST=unix:///run/gantryd-dind/docker.sock") == 1
    assert sidecar_id  # the sidecar joins the runner's network, not the other way round


async def _during_job(stack: Stack, client: docker.DockerClient, job_id: int) -> None:
    """While the job waits for its release file: exactly the pair is on the host engine."""
    instance = stack.setup.instance
    with trio.fail_after(120):
        await stack.emulator.wait_job(job_id, "in_progress")
    found = client.containers.list(
        filters={"label": ["io.gantryd.managed=true", f"io.gantryd.instance={instance}"]}
    )
    roles = sorted(c.labels.get(ROLE_LABEL, "runner") for c in found)
    assert roles == [SIDECAR_ROLE, "runner"]
    runner = next(c for c in found if ROLE_LABEL not in c.labels)
    sidecar = next(c for c in found if ROLE_LABEL in c.labels)
    assert sidecar.name == f"{runner.name}-dind"
    assert sidecar.attrs["HostConfig"]["NetworkMode"] == f"container:{runner.id}"
    assert sidecar.attrs["HostConfig"]["Memory"] == 512 * 1024 * 1024
    _assert_strict(runner.attrs, sidecar.id)
    # The job's own containers live in the inner daemon only.
    assert not client.containers.list(all=True, filters={"name": f"_job_{job_id}_"})
    owned = client.volumes.list(filters={"label": f"io.gantryd.runner={runner.name}"})
    assert set(volume_names(runner.name).values()) < {v.name for v in owned}  # + /home/runner
    runner.exec_run(["touch", "/home/runner/_work/release"])


async def test_docker_build_and_run_and_a_container_job_leave_nothing_behind(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    busybox_image: str,
    cleanup: list[str],
) -> None:
    build = f"""
docker version
docker pull {busybox_image}
mkdir ctx
docker create --name bb {busybox_image} /bin/busybox true >/dev/null
docker cp bb:/bin/busybox ctx/busybox
docker rm bb >/dev/null
printf 'FROM scratch\\nCOPY busybox /bin/busybox\\nENTRYPOINT ["/bin/busybox"]\\n' >ctx/Dockerfile
DOCKER_BUILDKIT=0 docker build --quiet --tag job-built ctx
docker run --rm --network none job-built echo "built FROM scratch and ran"
# the inner daemon's containers inherit no host mount and see no Docker socket of the host
docker run --rm --network none job-built sh -c 'test ! -e /var/run/docker.sock && ! ls /home'
while [ ! -e /home/runner/_work/release ]; do sleep 0.2; done
"""
    in_container = """
echo "pid 1: $(tr '\\0' ' ' </proc/1/cmdline)"
ls /__w/_temp/*.sh >/dev/null && echo "the runner's _work is /__w here"
echo hi >"$GITHUB_WORKSPACE/out.txt" && cat out.txt
"""
    async with pool_stack(tmp_path, pool=_pool(official_image, dind_image)) as stack:
        cleanup.append(stack.setup.instance)
        pools = stack.daemon.pools
        assert pools is not None
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, build)
        await _during_job(stack, docker_client, job.id)
        with trio.fail_after(180):
            await stack.emulator.wait_job(job.id, "completed")
            await pools.wait_no_runners()
        done = stack.emulator.job(job.id)
        log = (done.log or b"").decode()
        assert done.conclusion == "success", log
        assert "built FROM scratch and ran" in log
        assert _leftovers(docker_client, stack.setup.instance) == {
            "containers": [],
            "volumes": [],
            "networks": [],
        }
        second = stack.emulator.create_job(
            "octo-org/app", JOB_LABELS, in_container, container=busybox_image
        )
        with trio.fail_after(180):
            await stack.emulator.wait_job(second.id, "completed")
            await pools.wait_no_runners()
        done = stack.emulator.job(second.id)
        log = (done.log or b"").decode()
        assert done.conclusion == "success", log
        assert "pid 1: tail -f /dev/null" in log  # the step ran in the job container
        assert "the runner's _work is /__w here" in log and "\nhi\n" in log
        assert pools.stats.outcomes[Outcome.DIND_FAILED] == 0
        starts = stack.daemon.metrics.registry.get_sample_value(
            "gantryd_container_start_duration_seconds_count", {"pool": "default", "kind": "dind"}
        )
        assert starts == 2  # one sidecar start per job, in the start histogram
        assert _leftovers(docker_client, stack.setup.instance) == {
            "containers": [],
            "volumes": [],
            "networks": [],
        }


async def test_a_privileged_sidecar_runs_where_the_engine_grants_it_else_fails_the_job(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    cleanup: list[str],
) -> None:
    """``docker_privileged = true`` (the default): on an Engine whose dockerd holds every
    capability the job's `docker version` succeeds; on one that lacks some (this machine's:
    SYS_RESOURCE), as check-config predicts, it is the job's infrastructure failure, with the
    reason, and nothing is left."""
    from agent.container.engine_limits import engine_missing_capabilities

    missing = engine_missing_capabilities()
    if isinstance(missing, str):
        pytest.skip(f"dockerd's capabilities are not readable here: {missing}")
    pool = _pool(official_image, dind_image, docker_privileged=True)
    async with pool_stack(tmp_path, pool=pool, queue={"retry_attempts": 0}) as stack:
        cleanup.append(stack.setup.instance)
        pools, queue = stack.daemon.pools, stack.daemon.queue
        assert pools is not None and queue is not None
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "docker version")
        with trio.fail_after(120):
            if missing:
                entry = await wait_state(pools, queue, job.id, JobState.DEAD)
            else:
                await stack.emulator.wait_job(job.id, "completed")
            await pools.wait_no_runners()
        if missing:
            error = entry.last_error or ""
            assert error.startswith("the job's Docker daemon (sidecar) could not start"), error
            assert "unable to apply caps" in error
            assert pools.stats.outcomes[Outcome.DIND_FAILED] == 1
        else:
            assert stack.emulator.job(job.id).conclusion == "success"
        assert _leftovers(docker_client, stack.setup.instance) == {
            "containers": [],
            "volumes": [],
            "networks": [],
        }


async def test_a_daemon_that_exits_is_reported_with_its_last_log_lines(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    cleanup: list[str],
) -> None:
    """A registry_mirror dockerd refuses makes the daemon exit at once: its own words are in
    the job's reason."""
    pool = _pool(official_image, dind_image, registry_mirror="http://[not-a-host")
    async with pool_stack(tmp_path, pool=pool, queue={"retry_attempts": 0}) as stack:
        cleanup.append(stack.setup.instance)
        assert stack.daemon.pools is not None and stack.daemon.queue is not None
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, "docker version")
        with trio.fail_after(120):
            entry = await wait_state(stack.daemon.pools, stack.daemon.queue, job.id, JobState.DEAD)
        error = entry.last_error or ""
        assert "the job's Docker daemon (sidecar) exited; its last log lines:" in error, error
        assert "mirror" in error.split("log lines:", 1)[1]


WAIT_FOR_RELEASE = "while [ ! -e /home/runner/_work/release ]; do sleep 0.2; done\ndocker version\n"


def _release(client: docker.DockerClient, runner: str) -> None:
    client.containers.get(runner).exec_run(["touch", "/home/runner/_work/release"])


async def test_a_reload_switches_the_mode_of_new_runners_only(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    cleanup: list[str],
) -> None:
    """A dind job runs; the pool is reloaded to docker = "none": the running job keeps its
    sidecar and finishes, the next job's runner has none (and no Docker)."""
    async with pool_stack(tmp_path, pool=_pool(official_image, dind_image)) as stack:
        cleanup.append(stack.setup.instance)
        pools = stack.daemon.pools
        assert pools is not None
        first = stack.emulator.create_job("octo-org/app", JOB_LABELS, WAIT_FOR_RELEASE)
        with trio.fail_after(120):
            await stack.emulator.wait_job(first.id, "in_progress")
        (running,) = pools.runners()
        assert running.sidecar and running.sidecar_id is not None
        path = stack.setup.config_path
        path.write_text(path.read_text().replace('docker = "dind"', 'docker = "none"'))
        assert stack.daemon.reload()
        second = stack.emulator.create_job(
            "octo-org/app", JOB_LABELS, 'test -z "$DOCKER_HOST" && ! docker ps'
        )
        with trio.fail_after(120):
            await stack.emulator.wait_job(second.id, "completed")
        assert stack.emulator.job(second.id).conclusion == "success"
        assert docker_client.containers.get(running.sidecar_id).status == "running"
        _release(docker_client, running.name)
        with trio.fail_after(120):
            await stack.emulator.wait_job(first.id, "completed")
            await pools.wait_no_runners()
        assert stack.emulator.job(first.id).conclusion == "success"
        assert _leftovers(docker_client, stack.setup.instance)["volumes"] == []


async def test_a_restarted_gantryd_adopts_the_pair_and_removes_it_after_the_job(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    cleanup: list[str],
) -> None:
    from agent.config import load_config
    from agent.daemon import Daemon
    from agent.reload import LiveConfig
    from agent.systemd import Notifier
    from tests.container.stack import emulator_setup

    async with emulator_setup(tmp_path, pool=_pool(official_image, dind_image)) as setup:
        cleanup.append(setup.instance)
        async with trio.open_nursery() as nursery:
            first = Daemon(live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({}))
            intake = await nursery.start(first.run)
            setup.emulator.add_hook(intake + "/webhook", setup.webhook_secret)
            job = setup.emulator.create_job("octo-org/app", JOB_LABELS, WAIT_FOR_RELEASE)
            with trio.fail_after(120):
                await setup.emulator.wait_job(job.id, "in_progress")
            assert first.pools is not None
            (runner,) = first.pools.runners()
            nursery.cancel_scope.cancel()  # stopped: the pair keeps running
        async with trio.open_nursery() as nursery:
            second = Daemon(live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({}))
            intake = await nursery.start(second.run)
            setup.emulator.add_hook(intake + "/webhook", setup.webhook_secret)
            assert second.pools is not None
            (adopted,) = second.pools.runners()
            assert adopted.name == runner.name and adopted.sidecar
            assert adopted.sidecar_id == runner.sidecar_id
            _release(docker_client, runner.name)
            with trio.fail_after(120):
                await setup.emulator.wait_job(job.id, "completed")
                await second.pools.wait_no_runners()
            assert setup.emulator.job(job.id).conclusion == "success"
            assert _leftovers(docker_client, setup.instance) == {
                "containers": [],
                "volumes": [],
                "networks": [],
            }
            nursery.cancel_scope.cancel()


async def test_gc_removes_an_orphaned_pair_sidecar_and_volumes(
    docker_client: docker.DockerClient, dind_image: str, cleanup: list[str]
) -> None:
    """What a crash between creation and the row's removal leaves: labelled, unknown to the
    state database, so garbage collection removes it all (containers before volumes)."""
    from agent.container.dind import create_volumes, sidecar_name
    from agent.container.docker_api import DockerAPI
    from agent.container.gc import collect_garbage

    instance = f"test-gc-{ROOT.name}-{id(cleanup)}"
    cleanup.append(instance)
    name = f"gantryd-{instance}-orphan"
    labels = {
        "io.gantryd.managed": "true",
        "io.gantryd.instance": instance,
        "io.gantryd.runner": name,
        "io.gantryd.expires": "9999999999",
    }
    api = DockerAPI()
    try:
        await create_volumes(api, name, labels)
        docker_client.containers.create(
            dind_image,
            ["true"],
            name=sidecar_name(name),
            labels={**labels, ROLE_LABEL: SIDECAR_ROLE},
            volumes={v: {"bind": p, "mode": "rw"} for p, v in volume_names(name).items()},
        )
        collected = await collect_garbage(api, instance=instance, known=set(), now=0.0)
    finally:
        api.close()
    assert collected.containers == [sidecar_name(name)]
    assert sorted(collected.volumes) == sorted(volume_names(name).values())
    assert _leftovers(docker_client, instance) == {"containers": [], "volumes": [], "networks": []}


async def test_a_jobs_peak_memory_includes_what_its_containers_use_in_the_sidecar(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    busybox_image: str,
    cleanup: list[str],
) -> None:
    """The job's container holds 96 MiB for a few seconds (a tmpfs file, charged to its cgroup
    inside the sidecar's); the runner container is limited to 64 MiB, so a recorded peak of 96
    MiB or more is the sidecar counted with it."""
    script = (
        f"docker run --rm --network none --tmpfs /t:size=128m {busybox_image} /bin/busybox sh -c "
        "'/bin/busybox head -c 100663296 /dev/zero >/t/x && /bin/busybox sleep 3'\n"
    )
    pool = _pool(official_image, dind_image, memory="64MiB")
    async with pool_stack(tmp_path, pool=pool) as stack:
        cleanup.append(stack.setup.instance)
        pools = stack.daemon.pools
        assert pools is not None
        job = stack.emulator.create_job("octo-org/app", JOB_LABELS, script)
        with trio.fail_after(120):
            await stack.emulator.wait_job(job.id, "completed")
            await pools.wait_no_runners()
        assert stack.emulator.job(job.id).conclusion == "success"
        usage = await pools.usage(job.id)
        assert usage is not None and usage.peak_memory >= 96 * 1024 * 1024, usage
        assert _leftovers(docker_client, stack.setup.instance)["volumes"] == []


async def test_a_restart_after_a_crash_between_removal_steps_removes_the_rest(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    official_image: str,
    dind_image: str,
    cleanup: list[str],
) -> None:
    """gantryd stopped after removing a runner's container but before its sidecar and volumes
    (the row still names the runner): the next start removes the rest, in order."""
    from agent.config import load_config
    from agent.daemon import Daemon
    from agent.reload import LiveConfig
    from agent.systemd import Notifier
    from tests.container.stack import emulator_setup

    async with emulator_setup(tmp_path, pool=_pool(official_image, dind_image)) as setup:
        cleanup.append(setup.instance)
        async with trio.open_nursery() as nursery:
            first = Daemon(live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({}))
            intake = await nursery.start(first.run)
            setup.emulator.add_hook(intake + "/webhook", setup.webhook_secret)
            job = setup.emulator.create_job("octo-org/app", JOB_LABELS, WAIT_FOR_RELEASE)
            with trio.fail_after(120):
                await setup.emulator.wait_job(job.id, "in_progress")
            assert first.pools is not None
            (runner,) = first.pools.runners()
            nursery.cancel_scope.cancel()
        docker_client.containers.get(runner.name).remove(force=True, v=True)  # step 1 only
        assert docker_client.containers.get(f"{runner.name}-dind").status == "running"
        async with trio.open_nursery() as nursery:
            second = Daemon(live=LiveConfig(load_config(setup.config_path)), notifier=Notifier({}))
            await nursery.start(second.run)
            assert second.pools is not None
            assert runner.name not in {r.name for r in second.pools.runners()}
            owned = {"label": f"io.gantryd.runner={runner.name}"}
            assert docker_client.containers.list(all=True, filters=owned) == []
            assert docker_client.volumes.list(filters=owned) == []
            nursery.cancel_scope.cancel()
