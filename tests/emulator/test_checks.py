"""Check runs, commit statuses, run cancellation (emulator/checks*.py; docs/github.md §6, §4)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from agent.emulator import Emulator

SHA = "16c5286e8d9a0629956a28938386b36608707a71"
RUNS = "/repos/acme/app/check-runs"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token(token_for: Callable[[int], str]) -> str:
    return token_for(11)


async def test_check_run_lifecycle(http: httpx.AsyncClient, token: str, emulator: Emulator) -> None:
    created = await http.post(
        RUNS,
        headers=auth(token),
        json={"name": "gantryd", "head_sha": SHA, "external_id": "7", "status": "queued"},
    )
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert created.json()["status"] == "queued" and created.json()["conclusion"] is None
    patched = await http.patch(
        f"{RUNS}/{run_id}",
        headers=auth(token),
        json={"conclusion": "success", "output": {"title": "Done", "summary": "ok"}},
    )
    assert patched.status_code == 200
    body = patched.json()
    assert body["status"] == "completed"  # "Providing conclusion ... sets the status"
    assert body["conclusion"] == "success" and body["completed_at"]
    assert emulator.checks.runs[run_id].writes == ["queued", "completed"]
    listed = await http.get(
        f"/repos/acme/app/commits/{SHA}/check-runs",
        headers=auth(token),
        params={"check_name": "gantryd"},
    )
    assert [r["external_id"] for r in listed.json()["check_runs"]] == ["7"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"head_sha": SHA}, '"name" wasn\'t supplied'),
        ({"name": "x"}, '"head_sha" wasn\'t supplied'),
        ({"name": "x", "head_sha": SHA, "status": "completed"}, "Conclusion must be provided"),
        ({"name": "x", "head_sha": SHA, "completed_at": "2026-01-01T00:00:00Z"}, "Conclusion"),
        ({"name": "x", "head_sha": SHA, "status": "pending"}, "Only GitHub Actions"),
        ({"name": "x", "head_sha": SHA, "conclusion": "stale"}, "not a valid conclusion"),
        ({"name": "x", "head_sha": SHA, "started_at": "yesterday"}, "not a timestamp"),
        ({"name": "x", "head_sha": SHA, "output": {"summary": "s"}}, '"title" wasn\'t supplied'),
        (
            {"name": "x", "head_sha": SHA, "output": {"title": "t", "summary": "s" * 65536}},
            "longer than 65535",
        ),
        (
            {
                "name": "x",
                "head_sha": SHA,
                "output": {"title": "t", "summary": "s", "text": "x" * 65536},
            },
            "longer than 65535",
        ),
    ],
)
async def test_check_run_validation_is_422_and_changes_nothing(
    http: httpx.AsyncClient, token: str, emulator: Emulator, body: dict[str, object], fragment: str
) -> None:
    response = await http.post(RUNS, headers=auth(token), json=body)
    assert response.status_code == 422
    assert fragment in response.json()["message"]
    assert emulator.checks.runs == {}


async def test_check_runs_need_checks_write_and_an_app(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    emulator._installations[11].permissions["checks"] = "read"
    response = await http.post(
        RUNS, headers=auth(token_for(11)), json={"name": "x", "head_sha": SHA}
    )
    assert response.status_code == 403
    assert response.headers["x-accepted-github-permissions"] == "checks=write"
    pat = emulator.add_personal_token(11)
    response = await http.post(RUNS, headers=auth(pat), json={"name": "x", "head_sha": SHA})
    assert response.status_code == 403
    assert "GitHub App" in response.json()["message"]


async def test_statuses_states_context_and_the_1000_limit(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    pat = emulator.add_personal_token(11)
    url = f"/repos/acme/app/statuses/{SHA}"
    bad = await http.post(url, headers=auth(pat), json={"state": "queued"})
    assert bad.status_code == 422
    missing = await http.post(url, headers=auth(pat), json={})
    assert missing.status_code == 422
    ok = await http.post(url, headers=auth(pat), json={"state": "pending", "context": "ci/a"})
    assert ok.status_code == 201 and ok.json()["context"] == "ci/a"
    for _ in range(999):
        emulator.checks.add_status("acme/app", SHA, {"state": "pending", "context": "CI/A"}, "")
    full = await http.post(url, headers=auth(pat), json={"state": "success", "context": "ci/a"})
    assert full.status_code == 422  # the context is case-insensitive: 1000 already
    assert "maximum number of statuses" in full.json()["message"]
    other = await http.post(url, headers=auth(pat), json={"state": "success", "context": "ci/b"})
    assert other.status_code == 201
    default = await http.post(url, headers=auth(pat), json={"state": "success"})
    assert default.json()["context"] == "default"


async def test_a_commit_keeps_the_latest_status_of_each_context(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    """Statuses with one context replace each other on the commit; other contexts stay."""
    pat = emulator.add_personal_token(11)
    url = f"/repos/acme/app/statuses/{SHA}"
    for state, context in [("pending", "ci/a"), ("pending", "ci/b"), ("success", "CI/A")]:
        answer = await http.post(url, headers=auth(pat), json={"state": state, "context": context})
        assert answer.status_code == 201
    combined = await http.get(f"/repos/acme/app/commits/{SHA}/status", headers=auth(pat))
    assert combined.status_code == 200
    body = combined.json()
    assert [(s["context"], s["state"]) for s in body["statuses"]] == [
        ("CI/A", "success"),
        ("ci/b", "pending"),
    ]
    assert (body["state"], body["total_count"], body["sha"]) == ("pending", 2, SHA)
    assert len(emulator.checks.statuses_of("acme/app", SHA)) == 3  # the history is kept
    await http.post(url, headers=auth(pat), json={"state": "error", "context": "ci/b"})
    again = await http.get(f"/repos/acme/app/commits/{SHA}/status", headers=auth(pat))
    assert again.json()["state"] == "failure"
    empty = await http.get(f"/repos/acme/app/commits/{'0' * 40}/status", headers=auth(pat))
    assert (empty.json()["state"], empty.json()["statuses"]) == ("pending", [])


@pytest.mark.parametrize(("field", "limit"), [("context", 255), ("description", 140)])
async def test_status_fields_have_length_limits(
    http: httpx.AsyncClient, emulator: Emulator, field: str, limit: int
) -> None:
    pat = emulator.add_personal_token(11)
    url = f"/repos/acme/app/statuses/{SHA}"
    fits = await http.post(url, headers=auth(pat), json={"state": "pending", field: "x" * limit})
    assert fits.status_code == 201
    over = {"state": "pending", field: "x" * (limit + 1)}
    refused = await http.post(url, headers=auth(pat), json=over)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {
            "resource": "Status",
            "code": "custom",
            "field": field,
            "message": f"{field} is too long (maximum is {limit} characters)",
        }
    ]


async def test_cancel_a_run_with_queued_jobs(
    http: httpx.AsyncClient, emulator: Emulator, token_for: Callable[[int], str]
) -> None:
    job = emulator.create_job("acme/app", ["self-hosted"], "true")
    url = f"/repos/acme/app/actions/runs/{job.run_id}/cancel"
    denied = await http.post(url, headers=auth(token_for(11)))
    assert denied.status_code == 403  # Actions: read only by default
    assert denied.headers["x-accepted-github-permissions"] == "actions=write"
    emulator._installations[11].permissions["actions"] = "write"
    token = token_for(11)
    assert (await http.post(url, headers=auth(token))).status_code == 202
    assert emulator.job(job.id).conclusion == "cancelled"
    assert emulator.checks.cancelled_runs == [job.run_id]
    assert (await http.post(url, headers=auth(token))).status_code == 409
    assert (
        await http.post("/repos/acme/app/actions/runs/1/cancel", headers=auth(token))
    ).status_code == 404
