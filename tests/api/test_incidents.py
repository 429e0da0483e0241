"""Incidents: staff (or the host app, with its staff key) record an irregularity on a session;
it is in the timeline with its actor, flags the session in the live view and the report, and
bad input is a 4xx that records nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from invigilator import analytics
from support.api import Api, assert_problem
from support.db import TEST_POLICY, shift_session


def incidents(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM test_session_incident").fetchone()
    assert row is not None
    return int(row[0])


async def record(api: Api, candidate_id: str, **body: Any) -> Any:
    return await api.client.post(
        f"/api/v1/sessions/{candidate_id}/incidents", json=body, headers=api.staff
    )


async def test_an_incident_is_in_the_timeline_with_its_actor(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await api.start("alice")
    response = await record(
        api, "alice", severity="high", reason_code="second_person", note="someone behind"
    )
    assert response.status_code == 201, response.text
    incident = response.json()
    assert incident["severity"] == "high" and incident["reason_code"] == "second_person"
    assert incident["actor"].startswith("staff:") and incident["note"] == "someone behind"

    events = (await api.client.get("/api/v1/sessions/alice/events", headers=api.staff)).json()[
        "events"
    ]
    (event,) = [e for e in events if e["type"] == "incident"]
    assert event["actor"] == incident["actor"]
    assert event["detail"] == {
        "incident_id": incident["id"],
        "severity": "high",
        "reason_code": "second_person",
        "note": "someone behind",
    }
    # nothing about the session itself changed
    session = (await api.client.get("/api/v1/sessions/alice", headers=api.staff)).json()
    assert session["status"] == "active" and session["extra_minutes"] == 0


async def test_an_ended_session_takes_an_incident_and_a_due_one_is_ended_first(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await api.start("done")
    await api.client.post(
        "/api/v1/sessions/done/end", json={"outcome": "submit"}, headers=api.staff
    )
    assert (await record(api, "done", severity="low", reason_code="review")).status_code == 201

    await api.start("late", duration_minutes=30)
    shift_session(db, "late", test_start_time=timedelta(hours=2))
    assert (await record(api, "late", severity="medium", reason_code="r1")).status_code == 201
    row = db.execute(
        "SELECT status, completion_method FROM test_session WHERE candidate_id = 'late'"
    ).fetchone()
    assert row is not None and row[0] != "active"  # lazy expiry before the incident
    types = [
        r[0]
        for r in db.execute(
            "SELECT type FROM test_session_event WHERE candidate_id = 'late' ORDER BY id"
        )
    ]
    assert types[-2:] == [row[0], "incident"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"severity": "critical", "reason_code": "x"}, "severity"),
        ({"severity": "low", "reason_code": "has space"}, "reason_code"),
        ({"severity": "low", "reason_code": ""}, "reason_code"),
        ({"severity": "low", "reason_code": "a" * 65}, "reason_code"),
        ({"severity": "low", "reason_code": "../x"}, "reason_code"),
        ({"severity": "low", "reason_code": "ok", "note": "n" * 2001}, "note"),
        ({"severity": "low", "reason_code": "ok", "note": "nul\u0000"}, "note"),
        ({"severity": "low"}, "reason_code"),
        ({"severity": 3, "reason_code": "ok"}, "severity"),
    ],
)
async def test_bad_input_is_a_422_and_records_nothing(
    api: Api, db: psycopg.Connection[Any], body: dict[str, Any], field: str | None
) -> None:
    await api.start("alice")
    body_problem = assert_problem(await record(api, "alice", **body), 422, "validation_error")
    if field:
        assert field in str(body_problem["errors"])
    assert incidents(db) == 0


async def test_unknown_session_is_404_and_a_candidate_may_not_record_one(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    assert_problem(await record(api, "nobody", severity="low", reason_code="x"), 404, "not_found")
    token = (await api.start("alice"))["token"]
    response = await api.client.post(
        "/api/v1/sessions/alice/incidents",
        json={"severity": "low", "reason_code": "x"},
        headers=api.bearer(token),
    )
    assert_problem(response, 401, "unauthorized")
    assert incidents(db) == 0


async def test_flagged_sessions_in_the_live_view_and_the_report(
    api: Api, db: psycopg.Connection[Any], store: Any
) -> None:
    for cid in ("a", "b", "c"):
        await api.start(cid)
    await record(api, "a", severity="low", reason_code="noise")
    await record(api, "a", severity="high", reason_code="phone")
    await record(api, "b", severity="medium", reason_code="noise")

    live = (await api.client.get("/api/v1/live", headers=api.staff)).json()
    assert live["flagged"] == 2
    rows = {s["candidate_id"]: s for s in live["sessions"]}
    assert (rows["a"]["incidents"], rows["a"]["flag"]) == (2, "high")
    assert (rows["b"]["incidents"], rows["b"]["flag"]) == (1, "medium")
    assert (rows["c"]["incidents"], rows["c"]["flag"]) == (0, None)

    summary = await analytics.summary(store.pool, policy=TEST_POLICY)
    assert summary["flagged"] == {
        "total": 2,
        "share": round(2 / 3, 4),
        "incidents": 3,
        "by_severity": {"low": 0, "medium": 1, "high": 1},
    }
    rows_csv = {(m, d): v for m, d, v in analytics.summary_rows(summary)}
    assert rows_csv[("flagged.by_severity", "high")] == 1
    # a window without those sessions counts none
    shift_session(db, "a", test_start_time=timedelta(days=400))
    later = await analytics.summary(store.pool, policy=TEST_POLICY)
    assert later["flagged"]["total"] == 1


async def test_erasure_removes_incidents_and_retention_empties_their_notes(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await api.start("gone")
    await api.start("old")
    await record(api, "gone", severity="low", reason_code="x", note="private")
    await record(api, "old", severity="low", reason_code="x", note="private")
    assert (await api.client.delete("/api/v1/sessions/gone", headers=api.staff)).status_code == 200
    assert db.execute(
        "SELECT count(*) FROM test_session_incident WHERE candidate_id = 'gone'"
    ).fetchone() == (0,)
    await api.client.post("/api/v1/sessions/old/end", json={"outcome": "submit"}, headers=api.staff)
    db.execute(
        "UPDATE test_session SET test_start_time = now() - interval '401 days', "
        "completed_at = now() - interval '400 days' "
        "WHERE candidate_id = 'old'"
    )
    sessions = api.app.state.runtime.sessions
    await sessions.purge_ended(timedelta(days=365), 10)
    assert db.execute(
        "SELECT severity, reason_code, note FROM test_session_incident WHERE candidate_id = 'old'"
    ).fetchall() == [("low", "x", "")]
