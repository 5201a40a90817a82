"""``docker = "dind"`` against ``docker = "none"``: webhook -> runner ready, and memory per job.

    .venv/bin/python bench/dind.py [--rounds 5]

One in-process gantryd (``agent.daemon.Daemon``) and the GitHub stand-in, one pool of the
official-like stand-in runner (network "host", as in the tests). Each round runs one job per
mode, the modes alternating (the pool is switched with a reload, which applies to new runners),
one job at a time, so both modes see the same load. Per job: from its creation on the stand-in
(the ``queued`` webhook goes out at once) to its start on a runner (the stand-in's
``started_at``: the runner connected and took it; under dind that includes the sidecar's start,
since the runner waits for its daemon before its Listener runs); then, while the job waits on a
file, one ``docker stats`` sample of the runner and (dind) of its sidecar, with the inner daemon
idle: the memory the mode adds per job. Needs root, Docker and the images of ``make setup``
(images/official-like-runner, images/dind). Everything made is removed; exit status 1 if
anything labelled with the run's instance is left.
"""

from __future__ import annotations

import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import secrets
import statistics
import tempfile

import docker
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import load_config
from agent.daemon import Daemon
from agent.demo import demo_emulator, write_demo_config
from agent.emulator.server import serve_emulator
from agent.emulator.state import Emulator
from agent.reload import LiveConfig
from agent.systemd import Notifier

REPOSITORY = "octo-org/app"
OFFICIAL_IMAGE = "gantryd/stand-in-runner-official:latest"
DIND_IMAGE = "gantryd/test-dind:latest"
RELEASE = "/home/runner/_work/release"
SCRIPT = f"while [ ! -e {RELEASE} ]; do sleep 0.2; done\n"
MODES = {
    "none": 'docker = "none"',
    "dind": (
        'docker = "dind"\nallow_privileged_sidecar = true\n'
        f'docker_image = "{DIND_IMAGE}"\ndocker_privileged = false\ndocker_memory = "512MiB"'
    ),
}


def memory_of(client: docker.DockerClient, name: str) -> int:
    stats = client.api.stats(name, stream=False, one_shot=True)
    return int((stats.get("memory_stats") or {}).get("usage") or 0)


async def one_job(
    daemon: Daemon, emulator: Emulator, client: docker.DockerClient, mode: str
) -> tuple[float, int, int]:
    """(seconds to started, runner memory, sidecar memory) of one job in ``mode``."""
    job = emulator.create_job(REPOSITORY, ["self-hosted", "linux"], SCRIPT)
    with trio.fail_after(300):
        await emulator.wait_job(job.id, "in_progress")
    pools = daemon.pools
    assert job.started_at is not None and pools is not None
    with trio.fail_after(60):  # its in_progress webhook reached gantryd
        await pools.wait_until(lambda: any(r.running_job == job.id for r in pools.runners()))
    (runner,) = [r for r in pools.runners() if r.running_job == job.id]
    runner_memory = await trio.to_thread.run_sync(memory_of, client, runner.name)
    sidecar_memory = 0
    if mode == "dind":
        sidecar_memory = await trio.to_thread.run_sync(memory_of, client, f"{runner.name}-dind")
    container = await trio.to_thread.run_sync(client.containers.get, runner.name)
    await trio.to_thread.run_sync(container.exec_run, ["touch", RELEASE])
    with trio.fail_after(300):
        await emulator.wait_job(job.id, "completed")
        await pools.wait_no_runners()
    if emulator.job(job.id).conclusion != "success":
        raise RuntimeError(f"{mode} job {job.id}: {emulator.job(job.id).conclusion}")
    return job.started_at - job.created_at, runner_memory, sidecar_memory


async def measure(rounds: int) -> int:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    secret = secrets.token_hex(20)
    instance = f"bench-dind-{secrets.token_hex(3)}"
    emulator = demo_emulator(key, [REPOSITORY])
    client = docker.from_env()
    results: dict[str, list[tuple[float, int, int]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="gantryd-bench-dind-") as tmp:
        workdir = Path(tmp)
        config = write_demo_config(
            workdir,
            api_url="http://127.0.0.1:1",  # replaced below, once the stand-in listens
            key=key,
            webhook_secret=secret,
            instance=instance,
            image=OFFICIAL_IMAGE,
            extra_pool=MODES["none"],
        )
        try:
            async with trio.open_nursery() as nursery:
                api_url = await nursery.start(serve_emulator, emulator)
                text = config.read_text().replace("http://127.0.0.1:1", api_url)
                config.write_text(text)
                daemon = Daemon(live=LiveConfig(load_config(config)), notifier=Notifier({}))
                intake = await nursery.start(daemon.run)
                emulator.add_hook(intake + "/webhook", secret)
                current = "none"
                for _ in range(rounds):
                    for mode in MODES:
                        text = config.read_text().replace(MODES[current], MODES[mode])
                        config.write_text(text)
                        current = mode
                        if not daemon.reload():
                            raise RuntimeError("reload failed")
                        results[mode].append(await one_job(daemon, emulator, client, mode))
                nursery.cancel_scope.cancel()
        finally:
            left = _remove_instance(client, instance)
    for mode, rows in results.items():
        ready = [r[0] for r in rows]
        print(
            f"{mode:4}  webhook->started median {statistics.median(ready):.2f} s "
            f"(min {min(ready):.2f}, max {max(ready):.2f}, n={len(ready)}); "
            f"runner memory median {statistics.median(r[1] for r in rows) / 2**20:.1f} MiB; "
            f"sidecar memory median {statistics.median(r[2] for r in rows) / 2**20:.1f} MiB"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if left:
        print(f"left behind: {left}")
        return 1
    return 0


def _remove_instance(client: docker.DockerClient, instance: str) -> list[str]:
    """Remove what the run made (containers, then volumes); what was there to remove."""
    label = f"io.gantryd.instance={instance}"
    left = []
    for container in client.containers.list(all=True, filters={"label": label}):
        left.append(container.name)
        container.remove(force=True, v=True)
    for volume in client.volumes.list(filters={"label": label}):
        left.append(volume.name)
        volume.remove(force=True)
    return left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.exit(trio.run(measure, args.rounds))


if __name__ == "__main__":
    main()
