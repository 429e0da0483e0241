"""Candidate routes: state, heartbeat, activity, events, sections, answers, complete, tab-close."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from support.api import Api, assert_problem
from support.db import shift_session


async def test_state_has_everything_needed_to_resume(api: Api) -> None:
    data = await api.start("alice", sections=["a", "b", "c"])
    token = data["token"]
    await api.as_candidate("POST", "alice", "sections", token, json={"section": "a"})
    await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "x"}, "seq": 1}
    )
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert state["status"] == "active"
    assert state["sections_completed"] == ["a"]
    assert state["pending_answers"] == {"q1": "x"}
    assert {"deadline", "remaining_seconds", "server_now"} <= state.keys()


async def test_heartbeat_returns_the_clock_and_next_interval(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice"))["token"]
    response = await api.as_candidate("POST", "alice", "heartbeat", token, json={"active": True})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "active" and body["next_heartbeat_seconds"] == 15
    assert body["remaining_seconds"] <= 3600
    row = db.execute(
        "SELECT last_heartbeat IS NOT NULL, last_activity IS NOT NULL FROM test_session"
    ).fetchone()
    assert row == (True, True)
    empty = await api.as_candidate("POST", "alice", "heartbeat", token)  # no body at all
    assert empty.status_code == 200


async def test_activity_and_client_events(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    assert (await api.as_candidate("POST", "alice", "activity", token)).status_code == 200
    lost = await api.as_candidate("POST", "alice", "events", token, json={"type": "focus_lost"})
    assert lost.status_code == 204
    forged = await api.as_candidate("POST", "alice", "events", token, json={"type": "completed"})
    assert_problem(forged, 422, "validation_error")
    events = (await api.client.get("/api/v1/sessions/alice/events", headers=api.staff)).json()
    assert [e["type"] for e in events["events"]] == ["started", "focus_lost"]


async def test_sections_are_idempotent_and_checked_against_the_plan(api: Api) -> None:
    token = (await api.start("alice", sections=["a", "b"]))["token"]
    for _ in range(2):
        response = await api.as_candidate("POST", "alice", "sections", token, json={"section": "a"})
        assert response.status_code == 200
        assert response.json()["sections_completed"] == ["a"]
    outside = await api.as_candidate("POST", "alice", "sections", token, json={"section": "z"})
    assert_problem(outside, 422, "validation_error")


async def test_answers_merge_with_the_seq_rule_and_acknowledge_commits(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    first = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "a", "q2": "b"}, "seq": 5}
    )
    assert first.status_code == 200
    assert first.json()["committed"] is True and first.json()["applied"] == ["q1", "q2"]
    stale = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "old"}, "seq": 4}
    )
    assert stale.json()["applied"] == [] and stale.json()["superseded"] == ["q1"]
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert state["pending_answers"] == {"q1": "a", "q2": "b"}


async def test_complete_is_idempotent(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    first = await api.as_candidate("POST", "alice", "complete", token)
    second = await api.as_candidate("POST", "alice", "complete", token)
    assert first.status_code == second.status_code == 200
    assert first.json()["already_ended"] is False and second.json()["already_ended"] is True
    assert first.json()["completed_at"] == second.json()["completed_at"]
    assert second.json()["completion_method"] == "manual"


async def test_writes_after_the_end_are_409_session_ended(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    await api.as_candidate("POST", "alice", "complete", token)
    for method, path, body in [
        ("POST", "heartbeat", {}),
        ("POST", "activity", None),
        ("POST", "sections", {"section": "a"}),
        ("PATCH", "answers", {"answers": {"q": 1}, "seq": 1}),
        ("POST", "events", {"type": "focus_lost"}),
    ]:
        response = await api.as_candidate(method, "alice", path, token, json=body)
        problem = assert_problem(response, 409, "session_ended")
        assert problem["session_status"] == "completed"
        assert problem["completion_method"] == "manual"
    state = await api.as_candidate("GET", "alice", "state", token)  # reads still work
    assert state.status_code == 200 and state.json()["status"] == "completed"


async def test_an_expired_session_is_ended_through_the_api_before_any_sweeper(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice", duration_minutes=30))["token"]
    await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "kept"}, "seq": 1}
    )
    shift_session(db, "alice", test_start_time=timedelta(minutes=31), last_heartbeat=timedelta(0))
    late = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "late"}, "seq": 2}
    )
    assert_problem(late, 409, "session_ended")
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert (state["status"], state["completion_method"]) == ("completed", "timer_expired")
    assert state["completed_at"] == state["deadline"]
    assert state["pending_answers"] == {"q1": "kept"}
    assert state["remaining_seconds"] == 0


async def test_tab_close_accepts_a_beacon_body(api: Api, db: psycopg.Connection[Any]) -> None:
    token = (await api.start("alice"))["token"]
    response = await api.client.post(
        "/api/v1/sessions/alice/tab-close",
        content=f'{{"token": "{token}"}}',
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 204
    assert db.execute("SELECT tab_closed_at IS NOT NULL FROM test_session").fetchone() == (True,)
    bare = await api.client.post("/api/v1/sessions/alice/tab-close", content=token)
    assert bare.status_code == 204
    # the reload's heartbeat clears it and logs `resumed`
    await api.as_candidate("POST", "alice", "heartbeat", token)
    assert db.execute("SELECT tab_closed_at FROM test_session").fetchone() == (None,)


async def test_tab_close_without_a_valid_token_is_refused(api: Api) -> None:
    await api.start("alice")
    none = await api.client.post("/api/v1/sessions/alice/tab-close", content="")
    assert_problem(none, 401, "unauthorized")
    bad = await api.client.post(
        "/api/v1/sessions/alice/tab-close", content='{"token": "forged.token.value"}'
    )
    assert_problem(bad, 401, "token_invalid")
