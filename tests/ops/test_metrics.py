"""agent/ops/metrics.py with its sampler, usage reader and listener: real scrapes, real promtool.

The pool supervisor's events (container starts, queue waits, job durations and outcomes) are
checked through a real run: the GitHub stand-in, gantryd in-process and real containers.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
import trio

from agent.container.lifecycle import RunnerState
from agent.emulator.webhooks import Faults
from agent.ops.metrics import (
    CounterView,
    CountingTransport,
    ErrorCounter,
    Metrics,
    endpoint_class,
)
from agent.ops.metrics_server import serve_metrics
from agent.ops.sampler import Sampler, Sources
from agent.orchestrator.intake_http import IntakeStats, Outcome
from agent.queue.base import JobSpec
from agent.queue.sqlite import open_sqlite_queue
from tests.conftest import remove_managed
from tests.container.stack import pool_stack

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FakeRunner:  # the fields the sampler reads from agent.container.lifecycle.Runner
    pool: str
    state: str
    container_id: str | None = None
    sidecar_id: str | None = None


async def promtool_check(text: str) -> None:
    checked = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def samples_of(text: str) -> dict[str, str]:
    return dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def _spec(job_id: int, pool: str = "default", priority: int = 0) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        run_id=1,
        run_attempt=1,
        repository="octo-org/app",
        installation_id=None,
        labels=("self-hosted",),
        pool=pool,
        priority=priority,
    )


async def _no_docker() -> None:
    raise OSError("Docker is down")


async def test_real_scrape_passes_promtool(tmp_path: Path) -> None:
    metrics = Metrics()
    async with open_sqlite_queue(tmp_path / "queue.db") as queue:
        await queue.enqueue(_spec(1, priority=5))
        await queue.enqueue(_spec(2, pool="big"))
        runners = [FakeRunner("default", "busy"), FakeRunner("default", "idle")]
        sampler = Sampler(
            metrics,
            Sources(
                runners=lambda: runners,
                queue_counts=queue.counts,
                pools=lambda: ["default", "big"],
                rate_limit_remaining=lambda: 4321,
                docker_ping=_no_docker,
                paused=lambda: True,
                reload_state=lambda: (False, 1_700_000_000.0),
                outdated_pools=lambda: ["big"],
            ),
        )
        await sampler.sample_once()
    intake = IntakeStats()
    metrics.watch_webhooks(lambda: {})  # replaced below, as a restarted intake would
    metrics.watch_webhooks(lambda: intake.received)
    intake.count("workflow_job", "queued", Outcome.ENQUEUED)
    intake.count("workflow_job", "queued", Outcome.ENQUEUED)
    intake.count("workflow_job", "queued; DROP TABLE", Outcome.INVALID)  # unauthenticated input
    intake.count("issues", "opened", Outcome.IGNORED)
    intake.count("ping", "none", Outcome.ACCEPTED)
    outcomes: Counter[str] = Counter(created=3, oom_killed=1)
    metrics.registry.register(
        CounterView("gantryd_runner_outcomes", "d", "outcome", lambda: outcomes)
    )
    github = httpx.AsyncClient(
        transport=CountingTransport(metrics, httpx.MockTransport(lambda r: httpx.Response(201))),
        base_url="https://api.github.invalid",
    )
    async with github:
        await github.post("/repos/o/r/actions/runners/generate-jitconfig")
    logging.getLogger("agent.container.pool_manager").addHandler(handler := ErrorCounter(metrics))
    try:
        logging.getLogger("agent.container.pool_manager").warning("runner failed (test)")
    finally:
        logging.getLogger("agent.container.pool_manager").removeHandler(handler)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_metrics, metrics, "127.0.0.1:0")
        async with httpx.AsyncClient() as client:
            scrape = await client.get(binds[0] + "/metrics")
            missing = await client.get(binds[0] + "/")
        nursery.cancel_scope.cancel()
    assert scrape.status_code == 200 and missing.status_code == 404
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = scrape.text
    await promtool_check(text)
    samples = samples_of(text)
    assert samples['gantryd_queue_jobs{pool="default",priority="5",state="ready"}'] == "1.0"
    assert samples['gantryd_queue_jobs{pool="big",priority="",state="queued"}'] == "1.0"
    assert samples['gantryd_runners{pool="default",state="busy"}'] == "1.0"
    assert samples['gantryd_runners{pool="big",state="idle"}'] == "0.0"
    assert samples["gantryd_github_rate_limit_remaining"] == "4321.0"
    assert samples["gantryd_docker_up"] == "0.0"
    assert samples["gantryd_scheduler_paused"] == "1.0"
    assert samples['gantryd_pool_image_outdated{pool="big"}'] == "1.0"
    assert samples['gantryd_pool_image_outdated{pool="default"}'] == "0.0"
    assert samples["gantryd_config_last_reload_successful"] == "0.0"
    assert samples['gantryd_runner_outcomes_total{outcome="oom_killed"}'] == "1.0"
    assert samples['gantryd_github_requests_total{endpoint="jitconfig",status="201"}'] == "1.0"
    assert samples['gantryd_errors_total{component="pool_manager",severity="warning"}'] == "1.0"
    assert any(k.startswith("gantryd_build_info{") for k in samples)
    received = 'gantryd_webhooks_received_total{{action="{}",event="{}",outcome="{}"}}'
    assert samples[received.format("queued", "workflow_job", "enqueued")] == "2.0"
    assert samples[received.format("other", "workflow_job", "invalid")] == "1.0"
    assert samples[received.format("other", "other", "ignored")] == "1.0"
    assert samples[received.format("none", "ping", "accepted")] == "1.0"
    assert sum(k.startswith("gantryd_webhooks_received_total{") for k in samples) == 4
    # _total only on counters; no label carries an id
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(("gauge", "histogram")):
            assert not line.split()[2].endswith("_total"), line
    assert not re.search(r'(job|runner|id)="', text)


def test_endpoint_classes_are_bounded() -> None:
    assert endpoint_class("/app/installations/77/access_tokens") == "installation_token"
    assert endpoint_class("/repos/o/r/installation") == "installation"
    assert endpoint_class("/orgs/o/actions/runners/123") == "runners"
    assert endpoint_class("/repos/o/r/actions/runs/5/jobs") == "jobs"
    assert endpoint_class("/repos/o/r/check-runs/9") == "check_runs"
    assert endpoint_class("/whatever/else") == "other"


def test_alert_rules_pass_promtool() -> None:
    rules = ROOT / "packaging/prometheus/gantryd-alerts.yml"
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = rules.read_text()
    for alert in (
        "QueueGrowing",
        "JobsDead",
        "GitHubErrors",
        "GitHubRateLimitLow",
        "DockerUnreachable",
        "ReloadFailed",
        "PoolImageOutdated",
    ):
        assert f"alert: Gantryd{alert}" in text


def test_dashboard_uses_only_exported_metric_names() -> None:
    dashboard = json.loads((ROOT / "packaging/grafana/gantryd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(gantryd_[a-z_]+)", e)}
    sources = (ROOT / "agent/ops").glob("*.py")
    exported = {n for p in sources for n in re.findall(r'"(gantryd_[a-z_]+)"', p.read_text())}
    exported |= {n + "_total" for n in exported}
    assert names and names <= exported, names - exported


@pytest.mark.docker
async def test_container_usage_is_read_from_its_cgroup(
    runner_image: str, docker_client: docker.DockerClient
) -> None:
    container = docker_client.containers.run(
        runner_image, ["sh", "-c", "sleep 30"], detach=True, labels={"io.gantryd.test": "usage"}
    )
    try:
        metrics = Metrics()
        runners = [FakeRunner("default", "busy", container.id)]
        sampler = Sampler(
            metrics,
            Sources(
                runners=lambda: runners,
                queue_counts=_no_queue,
                pools=lambda: ["default"],
                rate_limit_remaining=lambda: None,
                docker_ping=_ok,
                paused=lambda: False,
                reload_state=lambda: (True, 0.0),
            ),
        )
        await sampler.sample_once()
        await sampler.sample_once()
        load = sampler.usage.load[container.id]
        assert load.memory > 0 and load.cpu >= 0
        text = metrics.exposition().decode()
        # Compared as numbers: from 1e6 up the exposition writes Go's form (1.314816e+06).
        memory = samples_of(text)['gantryd_container_memory_usage_bytes{pool="default"}']
        assert float(memory) == load.memory
        assert "gantryd_docker_up 1.0" in text
    finally:
        container.remove(force=True)


async def _no_queue() -> None:
    raise OSError("no queue in this test")


async def _ok() -> None:
    return None


@pytest.mark.docker
async def test_pool_events_of_a_real_run_reach_the_scrape(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> None:
    """A warm hit, a cold start, a failing job and a dead-lettered one, every webhook delivered
    twice: each job is counted once, with GitHub's conclusion or "dead"."""
    broken = {
        "name": "broken",
        "labels": ["self-hosted", "broken"],
        "image": "gantryd/absent-runner:none",  # not present, pull_policy never: cannot start
        "max_runners": 1,
    }
    async with pool_stack(
        tmp_path,
        pool={"min_idle": 1, "warm_repositories": ["octo-org/app"], "max_runners": 3},
        extra_pools=[broken],
        queue={"retry_attempts": 0},
    ) as stack:
        try:
            pools, metrics, emulator = stack.daemon.pools, stack.daemon.metrics, stack.emulator
            assert pools is not None and stack.daemon.metrics_url is not None
            emulator.faults = Faults(duplicate_rate=1.0)

            def idle_warm() -> bool:
                return any(r.warm and r.state is RunnerState.IDLE for r in pools.runners())

            with trio.fail_after(30):
                await pools.wait_until(idle_warm)
            (warm,) = [r for r in pools.runners() if r.warm]
            assert warm.runner_id is not None
            with trio.fail_after(30):
                await emulator.wait_runner(warm.runner_id)
            labels = ["self-hosted", "linux"]
            emulator.create_job("octo-org/app", labels, "echo ok")  # the warm runner's
            emulator.create_job("octo-org/lib", labels, "exit 1")  # no warm runner: cold
            emulator.create_job("octo-org/app", ["self-hosted", "broken"], "echo never")

            def value(name: str, **labels: str) -> float:
                return metrics.registry.get_sample_value(name, labels) or 0.0

            def ended(*outcomes: tuple[str, str]) -> float:
                return sum(value("gantryd_jobs_total", pool=p, outcome=o) for p, o in outcomes)

            with trio.fail_after(60):
                await pools.wait_until(
                    lambda: ended(("default", "success"), ("default", "failure")) == 2
                )
            # The emulator sends each duplicate right after its original, and gantryd handles
            # job events in order: once a job created now has ended, every duplicate has been
            # handled (the fence itself is delivered once).
            emulator.faults = Faults()
            emulator.create_job("octo-org/lib", labels, "echo fence")  # cold again
            with trio.fail_after(60):
                await pools.wait_until(lambda: ended(("default", "success")) == 2)
            async with httpx.AsyncClient() as client:
                scrape = await client.get(stack.daemon.metrics_url)
        finally:
            remove_managed(docker_client, stack.setup.instance)
    text = scrape.text
    await promtool_check(text)
    samples = samples_of(text)
    start = "gantryd_container_start_duration_seconds"
    assert samples[f'{start}_count{{kind="warm",pool="default"}}'] == "1.0"
    assert samples[f'{start}_count{{kind="cold",pool="default"}}'] == "2.0"
    assert f'{start}_bucket{{kind="cold",le="0.1",pool="default"}}' in samples
    assert f'{start}_bucket{{kind="cold",le="300.0",pool="default"}}' in samples
    assert samples['gantryd_job_queue_wait_seconds_count{pool="default"}'] == "3.0"
    assert samples['gantryd_job_duration_seconds_count{pool="default"}'] == "3.0"
    assert 'gantryd_job_duration_seconds_bucket{le="10.0",pool="default"}' in samples
    assert 'gantryd_job_duration_seconds_bucket{le="21600.0",pool="default"}' in samples
    jobs = {k: v for k, v in samples.items() if k.startswith("gantryd_jobs_total")}
    assert jobs == {
        'gantryd_jobs_total{outcome="success",pool="default"}': "2.0",
        'gantryd_jobs_total{outcome="failure",pool="default"}': "1.0",
        'gantryd_jobs_total{outcome="dead",pool="broken"}': "1.0",
    }
    assert not re.search(r'(job|runner|id)="', text)


def test_intake_connections_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    state = {"open": 3, "cut": 7}
    metrics.watch_connections(lambda: (state["open"], state["cut"]))
    state["open"] = 4
    text = metrics.exposition().decode()
    assert "gantryd_intake_connections 4.0" in text
    assert "gantryd_intake_connections_cut_total 7.0" in text
