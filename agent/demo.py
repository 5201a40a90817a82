"""``gantryd demo``: gantryd against the built-in GitHub stand-in, on this machine's Docker.

The stack is real except GitHub: the emulator (agent/emulator) issues App tokens and JIT
configs and sends signed webhooks; gantryd queues the jobs in SQLite and runs each in a fresh
container of the locally built stand-in runner image, which takes its job from the emulator.
``demo_stack`` is also what the end-to-end tests drive.
"""

from __future__ import annotations

import logging
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import load_config
from agent.container.docker_api import DockerAPI
from agent.daemon import Daemon
from agent.emulator.server import serve_emulator
from agent.emulator.state import Emulator
from agent.reload import LiveConfig
from agent.systemd import Notifier

RUNNER_IMAGE = "gantryd/stand-in-runner:latest"
APP_ID = 424242
INSTALLATION_ID = 1001
DEMO_REPOSITORIES = ("octo-org/app", "octo-org/lib")
POOL_LABELS = ("self-hosted", "linux", "x64")


@dataclass
class Stack:
    emulator: Emulator
    daemon: Daemon
    intake_url: str
    config_path: Path
    webhook_secret: str
    instance: str


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def write_demo_config(
    workdir: Path,
    *,
    api_url: str,
    key: rsa.RSAPrivateKey,
    webhook_secret: str,
    instance: str,
    image: str = RUNNER_IMAGE,
    extra_pool: str = "",
    runner_prefix: str = "gantryd",
    source: str = "webhook",
    scale_set_pool: str = "",
) -> Path:
    """A complete config.toml for the stand-in stack; credentials files beside it, mode 0600.

    ``scale_set_pool``: the name of a second pool, a scale-set one whose only label is that name,
    beside the ``default`` pool (a benchmark compares the two). Not ``self-hosted``: the scale
    set would then be offered the webhook pool's jobs too (its labels cover theirs)."""
    _write_private(
        workdir / "app.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(workdir / "webhook-secret", webhook_secret.encode())
    scale_set = source == "scale-set"
    # A scale-set pool registers its scale set in the organization; no webhook reaches it.
    github_extra = 'organizations = ["octo-org"]' if scale_set or scale_set_pool else ""
    webhook = "" if scale_set else 'webhook_secret_file = "webhook-secret"'
    pool_source = 'source = "scale-set"\nscope = "organization"' if scale_set else ""
    path = workdir / "config.toml"
    path.write_text(
        f"""\
[server]
listen = "127.0.0.1:0"
state_dir = "{workdir}"
runtime_dir = "{workdir}/run"
metrics_listen = "127.0.0.1:0"
instance = "{instance}"

[github]
api_url = "{api_url}"
app_id = {APP_ID}
runner_prefix = "{runner_prefix}"
private_key_file = "app.pem"
{webhook}
{github_extra}

[queue]
retry_attempts = 2
retry_delay = "1s"

[scheduler]
max_runners = 4
concurrency = 4

[[pool]]
name = "default"
labels = {list(POOL_LABELS)!r}
{_pool_limits(image)}
{pool_source}
{extra_pool}
{_scale_set_pool(scale_set_pool, image)}
""".replace("'", '"')
    )
    return path


def _scale_set_pool(name: str, image: str) -> str:
    if not name:
        return ""
    return f"""\
[[pool]]
name = "{name}"
labels = ["{name}"]
source = "scale-set"
scope = "organization"
{_pool_limits(image)}
"""


def _pool_limits(image: str) -> str:
    """The image, network and limits both demo pools run their jobs with."""
    return f"""\
image = "{image}"
network = "host"
read_only_rootfs = true
memory = "256MiB"
cpus = 1.0
pids_limit = 256
nofile = 4096
tmp_size = "64MiB"
pull_policy = "never"
bootstrap_timeout = "2m"
"""


def demo_emulator(
    key: rsa.RSAPrivateKey, repositories: Sequence[str] = DEMO_REPOSITORIES
) -> Emulator:
    """The GitHub stand-in the demo's App (``key``) is installed on."""
    return Emulator(
        app_id=APP_ID,
        app_public_key=key.public_key(),
        installations={INSTALLATION_ID: list(repositories)},
    )


@asynccontextmanager
async def demo_stack(
    workdir: Path,
    *,
    repositories: Sequence[str] = DEMO_REPOSITORIES,
    exit_settle: float = 5.0,
    extra_pool: str = "",
    runner_prefix: str = "gantryd",
    source: str = "webhook",
    emulator: Emulator | None = None,
    key: rsa.RSAPrivateKey | None = None,
    instance: str | None = None,
    scale_set_pool: str = "",
) -> AsyncIterator[Stack]:
    """Emulator + gantryd serving in this trio run; leaving the block stops both.

    ``source = "scale-set"``: the pool is a scale-set pool and no webhook is configured at the
    emulator. A given ``emulator`` (made with ``key``, served by the caller) is used instead of
    a new one, so a test can stop gantryd and start it again against the same GitHub.
    ``scale_set_pool`` adds a scale-set pool of that name beside a webhook ``default`` pool."""
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    webhook_secret = secrets.token_hex(20)
    instance = instance or f"demo-{secrets.token_hex(3)}"
    async with trio.open_nursery() as nursery:
        if emulator is None:
            emulator = demo_emulator(key, repositories)
            api_url = await nursery.start(serve_emulator, emulator)
        else:
            api_url = emulator.base_url
        config_path = write_demo_config(
            workdir,
            api_url=api_url,
            key=key,
            webhook_secret=webhook_secret,
            instance=instance,
            extra_pool=extra_pool,
            runner_prefix=runner_prefix,
            source=source,
            scale_set_pool=scale_set_pool,
        )
        daemon = Daemon(
            live=LiveConfig(load_config(config_path)),
            notifier=Notifier({}),
            exit_settle=exit_settle,
        )
        intake_url = await nursery.start(daemon.run)
        if source == "webhook":
            emulator.add_hook(intake_url + "/webhook", webhook_secret)
        yield Stack(emulator, daemon, intake_url, config_path, webhook_secret, instance)
        nursery.cancel_scope.cancel()


async def remove_leftovers(instance: str) -> list[str]:
    """Remove every container labelled with this demo's ``instance`` and name them: a run must
    leave nothing of its own on the engine, and no later GC would collect another instance's."""
    docker = await trio.to_thread.run_sync(DockerAPI)
    try:
        found = await docker.list_managed(instance=instance)
        for info in found:
            await docker.remove(info.id)
        return [f"{info.name} ({info.state})" for info in found]
    finally:
        docker.close()


async def _approval_case(stack: Stack) -> tuple[int, str, bool]:
    """A deploy job behind an environment with required reviewers: gantryd holds it (its
    check run says "Waiting for approval", no runner starts), then runs it once approved."""
    emulator, repository = stack.emulator, DEMO_REPOSITORIES[0]
    emulator.add_environment(repository, "production", required_reviewers=True)
    job = emulator.create_job(
        repository,
        ["self-hosted", "linux"],
        "echo deployed",
        name="deploy",
        environment="production",
    )
    print(f"demo: queued job {job.id} in {repository}, environment production needs a reviewer")

    def held() -> bool:
        runs = [r for r in emulator.checks.runs.values() if r.external_id == str(job.id)]
        return any(r.output.get("title") == "Waiting for approval" for r in runs)

    with trio.fail_after(60):
        await emulator.checks.wait_until(held)
    print(f"demo: job {job.id} held by gantryd: check run says 'Waiting for approval'")
    emulator.review_job(job.id, approve=True)
    print(f"demo: job {job.id} approved; gantryd provisions it now")
    return job.id, repository, False


async def _demo(jobs: int, source: str) -> int:
    with tempfile.TemporaryDirectory(prefix="gantryd-demo-") as tmp:
        async with demo_stack(Path(tmp), source=source) as stack:
            emulator = stack.emulator
            print(f"demo: emulator at {emulator.base_url}, gantryd intake at {stack.intake_url}")
            if source == "scale-set":
                print(
                    "demo: the pool is a runner scale set: gantryd long-polls the emulated "
                    "Actions service, no webhook is configured"
                )
            started = time.monotonic()
            hosted = emulator.create_job(
                DEMO_REPOSITORIES[0], ["ubuntu-latest"], "true", name="hosted"
            )
            print(
                f"demo: job {hosted.id} asks for ubuntu-latest: GitHub-hosted, gantryd ignores it"
            )
            created = []
            for i in range(jobs):
                repository = DEMO_REPOSITORIES[i % len(DEMO_REPOSITORIES)]
                failing = i == jobs - 1 and jobs > 1
                script = f'echo "job {i + 1}: building {repository} as $(id -un)"; ' + (
                    "echo 'tests failed' >&2; exit 1" if failing else "echo ok"
                )
                job = emulator.create_job(
                    repository, ["self-hosted", "linux"], script, name=f"job-{i + 1}"
                )
                created.append((job.id, repository, failing))
                print(
                    f"demo: queued job {job.id} in {repository}"
                    + (" (its script exits 1)" if failing else "")
                )
            created.append(await _approval_case(stack))
            with trio.fail_after(300):
                for job_id, _, _ in created:
                    await emulator.wait_job(job_id, "completed")
            elapsed = time.monotonic() - started
            print(f"\ndemo: all {len(created)} jobs completed in {elapsed:.1f}s")
            print(f"{'job':>14}  {'repository':<14} {'conclusion':<10} runner")
            ok = True
            for job_id, repository, failing in created:
                job = emulator.job(job_id)
                conclusion = str(job.conclusion.value if job.conclusion else None)
                print(f"{job_id:>14}  {repository:<14} {conclusion:<10} {job.runner_name}")
                ok &= conclusion == ("failure" if failing else "success")
            assert stack.daemon.pools is not None
            with trio.fail_after(30):
                await stack.daemon.pools.wait_no_runners()
        left = await remove_leftovers(stack.instance)
        if left:
            print("demo: containers were left on the engine (now removed):", *left, sep="\n  ")
        print("demo: every runner container was removed" if ok else "demo: unexpected results")
        return 0 if ok and not left else 1


def run_demo(*, jobs: int = 5, source: str = "webhook") -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "httpcore", "hypercorn.error", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return trio.run(_demo, jobs, source)
