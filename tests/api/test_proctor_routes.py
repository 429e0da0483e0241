"""The proctor controls over HTTP: start with a policy and accommodations, pause, resume,
reopen, change accommodations; each with its timeline event (actor and reason) and its webhook,
and the candidate's side of it (the heartbeat says `paused`, a grace save is `time_up`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from invigilator.webhooks.worker import session_view
from support.api import Api, assert_problem
from support.db import shift_session


async def _endpoint(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=api.staff
    )
    assert response.status_code == 201, response.text


def _deliveries(db: psycopg.Connection[Any], cid: str) -> list[tuple[str, dict[str, Any]]]:
    rows = db.execute(
        "SELECT type, payload FROM webhook_delivery WHERE candidate_id = %s ORDER BY id", (cid,)
    ).fetchall()
    return [(t, p) for t, p in rows]


async def _events(api: Api, cid: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/api/v1/sessions/{cid}/events", headers=api.staff)
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_start_takes_a_policy_and_accommodations_and_shows_them(api: Api) -> None:
    data = await api.start(
        "alice",
        duration_minutes=40,
        policy={"at_deadline": "grace", "grace_seconds": 90, "tab_close": "ignore"},
        accommodations={"time_multiplier": 1.5, "extra_minutes": 10},
    )
    assert data["policy"] == {
        "abandon_after_seconds": 300.0,  # the settings' value, stored with the session
        "tab_close": "ignore",
        "at_deadline": "grace",
        "grace_seconds": 90.0,
        "pages": "single",
    }
    assert data["accommodations"] == {"time_multiplier": 1.5, "extra_minutes": 10}
    start = datetime.fromisoformat(data["test_start_time"])
    assert datetime.fromisoformat(data["deadline"]) == start + timedelta(minutes=70)
    assert data["paused"] is False and data["reopen_count"] == 0
    (started,) = [e for e in await _events(api, "alice") if e["type"] == "started"]
    assert started["detail"]["policy"]["at_deadline"] == "grace"
    for bad in (
        {"accommodations": {"time_multiplier": 0}},
        {"accommodations": {"time_multiplier": "2"}},
        {"accommodations": {"extra_minutes": -1}},
        {"policy": {"at_deadline": "later"}},
        {"policy": {"abandon_after_seconds": 0}},
    ):
        response = await api.client.post(
            "/api/v1/sessions",
            json={"candidate_id": "bob", "create_candidate": True, **bad},
            headers=api.staff,
        )
        assert_problem(response, 422, "validation_error")


async def test_pause_and_resume_over_http_with_events_and_webhooks(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await _endpoint(api)
    token = (await api.start("alice"))["token"]
    base = "/api/v1/sessions/alice"
    paused = await api.client.post(
        f"{base}/pause", json={"reason": "fire alarm"}, headers=api.staff
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True and paused.json()["paused_at"] is not None
    again = await api.client.post(f"{base}/pause", json={"reason": "x"}, headers=api.staff)
    assert_problem(again, 409, "already_paused")
    shift_session(db, "alice", paused_at=timedelta(minutes=10))
    beat = await api.as_candidate("POST", "alice", "heartbeat", token)
    assert beat.status_code == 200 and beat.json()["paused"] is True
    assert beat.json()["remaining_seconds"] >= 59 * 60  # the clock stood still
    save = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "typed"}, "seq": 1}
    )
    assert save.status_code == 200  # answers already typed are still saved
    resumed = await api.client.post(
        f"{base}/resume", json={"reason": "all clear"}, headers=api.staff
    )
    assert resumed.status_code == 200
    body = resumed.json()
    assert body["paused"] is False and 590 <= body["paused_seconds"] <= 610
    assert body["remaining_seconds"] >= 59 * 60
    assert_problem(
        await api.client.post(f"{base}/resume", json={}, headers=api.staff), 409, "not_paused"
    )
    events = [e for e in await _events(api, "alice") if e["type"] in ("paused", "pause_ended")]
    assert [(e["type"], e["detail"]["reason"]) for e in events] == [
        ("paused", "fire alarm"),
        ("pause_ended", "all clear"),
    ]
    assert all(e["actor"].startswith("staff") for e in events)
    types = [t for t, _ in _deliveries(db, "alice")]
    assert types == ["session.started", "session.paused", "session.resumed"]
    # The paused webhook shows the clock standing: what was left at the pause.
    _, paused_payload = _deliveries(db, "alice")[1]
    view = session_view(paused_payload)
    assert view["paused"] is True and view["remaining_seconds"] >= 59 * 60
    assert view["policy"]["at_deadline"] == "submit"


async def test_reopen_over_http_hands_out_a_token_and_waits_for_the_page(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await _endpoint(api)
    token = (await api.start("alice", duration_minutes=30))["token"]
    base = "/api/v1/sessions/alice"
    assert_problem(
        await api.client.post(f"{base}/reopen", json={"minutes": 5}, headers=api.staff),
        409,
        "session_active",
    )
    done = await api.as_candidate("POST", "alice", "complete", token)
    assert done.status_code == 200 and done.json()["status"] == "completed"
    reopened = await api.client.post(
        f"{base}/reopen", json={"minutes": 12, "reason": "browser crashed"}, headers=api.staff
    )
    assert reopened.status_code == 200, reopened.text
    body = reopened.json()
    assert body["status"] == "active" and body["awaiting_candidate"] is True
    assert body["remaining_seconds"] == 12 * 60 and body["token"]
    # The page's repeated submit from before the reopen does not end the new opening.
    repeat = await api.as_candidate("POST", "alice", "complete", token)
    assert repeat.status_code == 200
    assert repeat.json()["status"] == "active" and repeat.json()["already_ended"] is False
    beat = await api.as_candidate("POST", "alice", "heartbeat", body["token"])
    assert beat.json()["paused"] is False and beat.json()["remaining_seconds"] >= 12 * 60 - 2
    final = await api.as_candidate("POST", "alice", "complete", body["token"])
    assert final.json()["status"] == "completed" and final.json()["already_ended"] is False
    for bad in ({"minutes": 0}, {"minutes": "5"}, {}):
        response = await api.client.post(f"{base}/reopen", json=bad, headers=api.staff)
        assert_problem(response, 422, "validation_error")
    types = [t for t, _ in _deliveries(db, "alice")]
    assert types == [
        "session.started",
        "session.completed",
        "session.reopened",
        "session.resumed",
        "session.completed",
    ]
    (event,) = [e for e in await _events(api, "alice") if e["type"] == "reopened"]
    assert event["detail"]["reason"] == "browser crashed" and event["detail"]["minutes"] == 12


async def test_accommodations_put_while_running_moves_the_deadline(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await _endpoint(api)
    data = await api.start("alice", duration_minutes=60)
    url = "/api/v1/sessions/alice/accommodations"
    changed = await api.client.put(
        url, json={"time_multiplier": 1.25, "reason": "approved"}, headers=api.staff
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["accommodations"] == {"time_multiplier": 1.25, "extra_minutes": 0}
    start = datetime.fromisoformat(data["test_start_time"])
    assert datetime.fromisoformat(body["deadline"]) == start + timedelta(minutes=75)
    assert_problem(await api.client.put(url, json={}, headers=api.staff), 422, "validation_error")
    assert [t for t, _ in _deliveries(db, "alice")][-1] == "session.time_extended"
    (event,) = [e for e in await _events(api, "alice") if e["type"] == "accommodations_changed"]
    assert event["detail"]["reason"] == "approved" and event["actor"].startswith("staff")


async def test_grace_save_is_time_up_and_the_submit_is_taken(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice", policy={"at_deadline": "grace", "grace_seconds": 120}))[
        "token"
    ]
    shift_session(
        db, "alice", test_start_time=timedelta(minutes=61), last_heartbeat=timedelta(seconds=5)
    )
    save = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": "late"}, "seq": 1}
    )
    assert_problem(save, 409, "time_up")
    done = await api.as_candidate("POST", "alice", "complete", token)
    assert done.json()["completion_method"] == "manual"
