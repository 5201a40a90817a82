"""Signed webhook deliveries (agent/emulator/webhooks.py) to a real HTTP receiver."""

from __future__ import annotations

import json
import socket

import trio

from agent.emulator import Emulator, Faults, JobStatus, signature_256
from agent.emulator.models import RunnerScope

from .conftest import Receiver

SECRET = "It's a Secret to Everybody"


def test_signature_matches_githubs_test_vector() -> None:
    # docs/github.md §1.2
    assert signature_256(SECRET.encode(), b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


async def test_ping_then_job_events_in_order_and_signed(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    hook = emulator.add_hook(receiver.url, SECRET)
    runner, _ = emulator.generate_jitconfig(
        RunnerScope(repository="acme/app"),
        {"name": "r", "runner_group_id": 1, "labels": ["self-hosted", "gantryd"]},
    )
    job = emulator.create_job("acme/app", ["self-hosted", "gantryd"], "true")
    session = emulator.open_session(runner.secret)
    with trio.fail_after(5):
        await emulator.wait_message(runner.secret, session.id)
    emulator.report_result(runner.secret, job.id, 0, b"")
    requests = await receiver.wait_for(4)
    for request in requests:
        assert request.headers["x-hub-signature-256"] == signature_256(
            SECRET.encode(), request.body
        )
        assert request.headers["user-agent"].startswith("GitHub-Hookshot/")
        assert request.headers["x-github-hook-id"] == str(hook.id)
        assert request.headers["x-github-hook-installation-target-type"] == "integration"
        assert request.headers["x-github-hook-installation-target-id"] == str(emulator.app_id)
        assert request.headers["content-type"] == "application/json"
    assert len({r.headers["x-github-delivery"] for r in requests}) == 4
    events = [r.headers["x-github-event"] for r in requests]
    assert events == ["ping", "workflow_job", "workflow_job", "workflow_job"]
    assert json.loads(requests[0].body)["hook_id"] == hook.id
    payloads = [json.loads(r.body) for r in requests[1:]]
    assert [p["action"] for p in payloads] == ["queued", "in_progress", "completed"]
    queued, started, completed = (p["workflow_job"] for p in payloads)
    assert queued["runner_id"] is None and queued["steps"] == []
    assert started["runner_name"] == "r" and started["status"] == "in_progress"
    assert (completed["status"], completed["conclusion"]) == ("completed", "success")
    first = payloads[0]
    assert first["installation"]["id"] == 11
    assert first["repository"]["full_name"] == "acme/app"
    assert first["repository"]["owner"]["type"] == "Organization"
    assert first["organization"]["login"] == "acme"
    assert first["sender"]["login"]
    deliveries = await emulator.wait_deliveries(4)
    assert [(d.status, d.status_code) for d in deliveries] == [("OK", 200)] * 4


async def test_failed_delivery_is_recorded_not_retried(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    receiver.status = 500
    emulator.add_hook(receiver.url, SECRET)
    emulator.create_job("acme/app", ["gantryd"], "true")
    with trio.fail_after(10):
        deliveries = await emulator.wait_deliveries(2)
    assert [(d.status, d.status_code) for d in deliveries] == [
        ("Invalid HTTP Response: 500", 500)
    ] * 2
    assert len(receiver.received) == 2


async def test_drop_and_duplicate_faults(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    emulator.faults = Faults(duplicate_rate=1.0)
    emulator.add_hook(receiver.url, SECRET)
    requests = await receiver.wait_for(2)
    assert requests[0].headers["x-github-delivery"] == requests[1].headers["x-github-delivery"]
    emulator.faults = Faults(drop_rate=1.0)
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    with trio.fail_after(10):
        deliveries = await emulator.wait_deliveries(3)
    assert deliveries[-1].status == "failed to connect to host"
    assert deliveries[-1].outgoing.job_id == job.id
    assert len(receiver.received) == 2


async def test_repository_hook_gets_only_its_repository(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    emulator.add_hook(receiver.url, "", repository="acme/lib")
    emulator.create_job("acme/app", ["gantryd"], "true")
    job = emulator.create_job("acme/lib", ["gantryd"], "true")
    requests = await receiver.wait_for(2)
    assert "x-hub-signature-256" not in requests[0].headers  # no secret, no signature (§1.1)
    assert requests[0].headers["x-github-hook-installation-target-type"] == "repository"
    payload = json.loads(requests[1].body)
    assert payload["workflow_job"]["id"] == job.id
    assert "installation" not in payload
    assert emulator.job(job.id).status is JobStatus.QUEUED


async def test_one_event_has_one_guid_for_all_its_hooks(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    emulator.add_hook(receiver.url, SECRET)
    emulator.add_hook(receiver.url, SECRET, repository="acme/app")
    emulator.add_hook(receiver.url, SECRET, org="acme")
    pings = await receiver.wait_for(3)
    assert len({r.headers["x-github-delivery"] for r in pings}) == 3  # three events
    job = emulator.create_job("acme/app", ["gantryd"], "true")
    emulator.cancel_job(job.id)
    requests = (await receiver.wait_for(9))[3:]
    by_action: dict[str, set[str]] = {}
    targets: dict[str, set[str]] = {}
    for request in requests:
        action = json.loads(request.body)["action"]
        by_action.setdefault(action, set()).add(request.headers["x-github-delivery"])
        targets.setdefault(action, set()).add(
            request.headers["x-github-hook-installation-target-type"]
        )
    assert sorted(by_action) == ["completed", "queued"]
    assert all(len(guids) == 1 for guids in by_action.values())  # shared by the three hooks
    assert by_action["queued"] != by_action["completed"]
    assert targets["queued"] == {"integration", "repository", "organization"}


async def test_behind_a_balancer_each_delivery_goes_to_one_backend_chosen_at_random(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    backends = (f"{receiver.url}?backend=1", f"{receiver.url}?backend=2")
    hook = emulator.add_hook("https://balancer.example/hook", SECRET, backends=backends)
    assert hook.hook_json(emulator.app_id)["config"]["url"] == "https://balancer.example/hook"
    for _ in range(10):
        emulator.create_job("acme/app", ["gantryd"], "true")
    with trio.fail_after(10):
        deliveries = await emulator.wait_deliveries(11)  # the ping and ten queued
    assert [d.status for d in deliveries] == ["OK"] * 11
    assert {d.url for d in deliveries} == set(backends)  # both chosen (seeded emulator)
    assert len(receiver.received) == 11  # each delivery reached one backend, once


async def test_a_backend_refusing_connections_is_passed_over_and_none_is_doubled(
    emulator: Emulator, base_url: str, receiver: Receiver
) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    emulator.add_hook(receiver.url, SECRET, backends=(dead, receiver.url))
    for _ in range(6):
        emulator.create_job("acme/app", ["gantryd"], "true")
    with trio.fail_after(10):
        deliveries = await emulator.wait_deliveries(7)
    assert [(d.status, d.url) for d in deliveries] == [("OK", receiver.url)] * 7
    assert len(receiver.received) == 7


async def test_no_backend_taking_the_connection_fails_the_delivery(
    emulator: Emulator, base_url: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    emulator.add_hook("https://balancer.example/hook", SECRET, backends=(dead,))
    with trio.fail_after(10):
        (ping,) = await emulator.wait_deliveries(1)
    assert (ping.status, ping.status_code) == ("failed to connect to host", 0)
