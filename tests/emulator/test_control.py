"""The emulator's control API under /_emulator (agent/emulator/control.py)."""

from __future__ import annotations

import httpx
import trio

from agent.emulator import Emulator


async def test_jobs_hooks_faults(http: httpx.AsyncClient, emulator: Emulator) -> None:
    created = await http.post(
        "/_emulator/jobs",
        json={"repository": "acme/app", "labels": ["self-hosted", "gantryd"], "script": "true"},
    )
    assert created.status_code == 201
    job = created.json()
    assert (job["status"], job["labels"], job["runner_id"]) == (
        "queued",
        ["self-hosted", "gantryd"],
        None,
    )
    waited = await http.get(
        f"/_emulator/jobs/{job['id']}", params={"wait_status": "completed", "timeout": "0.1"}
    )
    assert waited.json()["status"] == "queued"  # nothing ran it; the wait just ended
    cancelled = await http.post(f"/_emulator/jobs/{job['id']}/cancel")
    assert (cancelled.status_code, cancelled.json()["conclusion"]) == (202, "cancelled")
    assert (await http.post(f"/_emulator/jobs/{job['id']}/cancel")).status_code == 409

    bad = await http.post("/_emulator/jobs", json={"repository": "acme/app", "script": "true"})
    assert bad.status_code == 422
    unknown = await http.post(
        "/_emulator/jobs", json={"repository": "x/y", "labels": ["a"], "script": "true"}
    )
    assert unknown.status_code == 404

    hook = await http.post(
        "/_emulator/hooks", json={"url": "http://127.0.0.1:9/none", "secret": "s"}
    )
    assert hook.status_code == 201 and hook.json()["type"] == "App"
    with trio.fail_after(15):
        await emulator.wait_deliveries(1)
    deliveries = (await http.get("/_emulator/deliveries")).json()
    assert deliveries[0]["event"] == "ping"
    assert deliveries[0]["status"] == "failed to connect to host"

    faults = await http.put("/_emulator/faults", json={"drop_rate": 0.5})
    assert faults.json()["drop_rate"] == 0.5
    assert emulator.faults.drop_rate == 0.5
    assert (await http.put("/_emulator/faults", json={"drop_rate": 2})).status_code == 422
    assert (await http.put("/_emulator/faults", json={"nope": 1})).status_code == 422
