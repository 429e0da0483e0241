"""Staff routes: start, list (keyset), get, events, extend, end."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from support.api import Api, assert_problem
from support.db import add_candidate, shift_session


async def test_start_returns_201_with_clock_and_token(api: Api) -> None:
    data = await api.start("alice", duration_minutes=45, sections=["intro", "sql"])
    assert data["status"] == "active" and data["candidate_id"] == "alice"
    assert data["remaining_seconds"] == 45 * 60
    deadline = datetime.fromisoformat(data["deadline"])
    assert deadline - datetime.fromisoformat(data["server_now"]) == timedelta(minutes=45)
    assert data["planned_sections"] == ["intro", "sql"]
    assert data["token"].count(".") == 2


async def test_repeating_start_for_an_active_session_gives_200_and_a_fresh_token(
    api: Api,
) -> None:
    first = await api.start("alice")
    response = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": "alice", "duration_minutes": 90},
        headers=api.staff,
    )
    assert response.status_code == 200
    again = response.json()
    assert again["test_start_time"] == first["test_start_time"]
    assert again["test_duration_minutes"] == 60  # unchanged
    ok = await api.as_candidate("POST", "alice", "heartbeat", again["token"])
    assert ok.status_code == 200


async def test_start_for_unknown_candidate_without_create_is_404(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/sessions", json={"candidate_id": "nobody"}, headers=api.staff
    )
    assert_problem(response, 404, "candidate_not_found")


async def test_start_uses_the_host_apps_candidate_row(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    add_candidate(db, "host-made")
    response = await api.client.post(
        "/api/v1/sessions", json={"candidate_id": "host-made"}, headers=api.staff
    )
    assert response.status_code == 201


async def test_start_after_the_session_ended_is_409(api: Api) -> None:
    data = await api.start("alice")
    await api.as_candidate("POST", "alice", "complete", data["token"])
    response = await api.client.post(
        "/api/v1/sessions", json={"candidate_id": "alice"}, headers=api.staff
    )
    body = assert_problem(response, 409, "session_already_ended")
    assert body["session_status"] == "completed"


async def test_list_is_keyset_paginated_and_filters_by_status(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    ids = [f"cand-{i}" for i in range(5)]
    for i, cid in enumerate(ids):
        await api.start(cid)
        shift_session(db, cid, test_start_time=timedelta(minutes=i))
    await api.client.post(
        "/api/v1/sessions/cand-0/end", json={"outcome": "submit"}, headers=api.staff
    )
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get("/api/v1/sessions", params=params, headers=api.staff)
        assert response.status_code == 200
        page = response.json()
        assert all("pending_answers" not in item for item in page["items"])
        seen += [item["candidate_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids and pages == 3
    completed = await api.client.get(
        "/api/v1/sessions", params={"status": "completed"}, headers=api.staff
    )
    assert [s["candidate_id"] for s in completed.json()["items"]] == ["cand-0"]


async def test_list_refuses_a_forged_cursor_and_a_bad_status(api: Api) -> None:
    forged = await api.client.get(
        "/api/v1/sessions", params={"cursor": "not-a-cursor!"}, headers=api.staff
    )
    assert_problem(forged, 422, "validation_error")
    bad = await api.client.get("/api/v1/sessions", params={"status": "paused"}, headers=api.staff)
    assert_problem(bad, 422, "validation_error")


async def test_get_session_includes_answers_for_staff(api: Api) -> None:
    data = await api.start("alice")
    await api.as_candidate(
        "PATCH", "alice", "answers", data["token"], json={"answers": {"q1": "x"}, "seq": 1}
    )
    response = await api.client.get("/api/v1/sessions/alice", headers=api.staff)
    assert response.status_code == 200
    assert response.json()["pending_answers"] == {"q1": "x"}
    missing = await api.client.get("/api/v1/sessions/nobody", headers=api.staff)
    assert_problem(missing, 404, "not_found")


async def test_extend_moves_the_deadline_and_is_in_the_timeline(api: Api) -> None:
    data = await api.start("alice", duration_minutes=30)
    response = await api.client.post(
        "/api/v1/sessions/alice/extend",
        json={"minutes": 10, "reason": "network outage"},
        headers=api.staff,
    )
    assert response.status_code == 200
    extended = response.json()
    assert datetime.fromisoformat(extended["deadline"]) - datetime.fromisoformat(
        data["deadline"]
    ) == timedelta(minutes=10)
    events = (await api.client.get("/api/v1/sessions/alice/events", headers=api.staff)).json()
    (ext,) = [e for e in events["events"] if e["type"] == "time_extended"]
    assert ext["detail"]["minutes"] == 10 and ext["detail"]["reason"] == "network outage"
    assert ext["actor"].startswith("staff:")
    assert "staff-key" not in str(events)  # the actor is a fingerprint, never the key


async def test_extend_refuses_absurd_minutes(api: Api) -> None:
    await api.start("alice")
    for minutes in (0, -5, 100000, "ten"):
        response = await api.client.post(
            "/api/v1/sessions/alice/extend", json={"minutes": minutes}, headers=api.staff
        )
        assert_problem(response, 422, "validation_error")


async def test_end_submit_and_terminate_set_the_admin_methods(api: Api) -> None:
    await api.start("a")
    await api.start("b")
    submit = await api.client.post(
        "/api/v1/sessions/a/end", json={"outcome": "submit", "reason": "proctor"}, headers=api.staff
    )
    terminate = await api.client.post(
        "/api/v1/sessions/b/end", json={"outcome": "terminate"}, headers=api.staff
    )
    assert (submit.json()["status"], submit.json()["completion_method"]) == ("completed", "admin")
    assert (terminate.json()["status"], terminate.json()["completion_method"]) == (
        "abandoned",
        "admin_terminated",
    )
    again = await api.client.post(
        "/api/v1/sessions/a/end", json={"outcome": "terminate"}, headers=api.staff
    )
    assert again.status_code == 200
    assert again.json()["already_ended"] is True
    assert again.json()["completion_method"] == "admin"
    assert again.json()["completed_at"] == submit.json()["completed_at"]


async def test_end_refuses_an_unknown_outcome(api: Api) -> None:
    await api.start("a")
    response = await api.client.post(
        "/api/v1/sessions/a/end", json={"outcome": "explode"}, headers=api.staff
    )
    assert_problem(response, 422, "validation_error")
