"""POST /api/v1/sessions/bulk: one action on many sessions, each changed on its own and
exactly once, with a complete reply; refusals per session; a bound on the set."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from support.api import Api, assert_problem, make_settings
from support.db import shift_session


def running(db: psycopg.Connection[Any], n: int, prefix: str = "c") -> list[str]:
    """`n` running sessions, written in one statement (the API would take a request each)."""
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    db.execute("INSERT INTO candidate (candidate_id) SELECT unnest(%s::text[])", (ids,))
    db.execute(
        "INSERT INTO test_session (candidate_id, test_start_time, last_heartbeat) "
        "SELECT unnest(%s::text[]), now(), now()",
        (ids,),
    )
    return ids


async def bulk(api: Api, **body: Any) -> Any:
    return await api.client.post("/api/v1/sessions/bulk", json=body, headers=api.staff)


def event_counts(db: psycopg.Connection[Any], type_: str) -> dict[str, int]:
    return dict(
        db.execute(
            "SELECT candidate_id, count(*) FROM test_session_event WHERE type = %s "
            "GROUP BY candidate_id",
            (type_,),
        ).fetchall()
    )


async def test_a_bulk_extend_of_300_running_sessions_changes_each_once(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    # 300, not the limit: the bulk pause below takes 1,000 (INVIGILATOR_BULK_MAX_SESSIONS)
    ids = running(db, 300)
    asked = ids + ids[:10]  # a repeated id is acted on once
    response = await bulk(api, action="extend", candidate_ids=asked, minutes=7, reason="outage")
    assert response.status_code == 200, response.text
    reply = response.json()
    assert (reply["requested"], reply["changed"], reply["refused"]) == (300, 300, 0)
    assert [item["candidate_id"] for item in reply["items"]] == ids  # complete, in order
    assert {(i["result"], i["status"]) for i in reply["items"]} == {("changed", "active")}
    assert db.execute(
        "SELECT extra_minutes, count(*) FROM test_session GROUP BY extra_minutes"
    ).fetchall() == [(7, 300)]
    counts = event_counts(db, "time_extended")
    assert len(counts) == 300 and set(counts.values()) == {1}
    (detail,) = {
        (r[0], r[1]["reason"])
        for r in db.execute(
            "SELECT actor, detail FROM test_session_event WHERE type = 'time_extended'"
        )
    }
    assert detail[0].startswith("staff:") and detail[1] == "outage"


async def test_a_bulk_end_by_filter_ends_each_once(api: Api, db: psycopg.Connection[Any]) -> None:
    ids = running(db, 100)
    response = await bulk(
        api, action="end", filter={"status": "active"}, outcome="terminate", reason="breach"
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["requested"] == 100 and reply["changed"] == 100
    assert sorted(i["candidate_id"] for i in reply["items"]) == ids
    assert db.execute(
        "SELECT status, completion_method, count(*) FROM test_session GROUP BY 1, 2"
    ).fetchall() == [("abandoned", "admin_terminated", 100)]
    assert set(event_counts(db, "abandoned").values()) == {1}
    # again: every one had ended; nothing changes, and the reply says so per session
    again = (await bulk(api, action="end", candidate_ids=ids[:3], outcome="submit")).json()
    assert [i["result"] for i in again["items"]] == ["unchanged"] * 3
    assert [i["status"] for i in again["items"]] == ["abandoned"] * 3


async def test_each_session_has_its_own_outcome(api: Api, db: psycopg.Connection[Any]) -> None:
    await api.start("live")
    await api.start("done")
    await api.client.post(
        "/api/v1/sessions/done/end", json={"outcome": "submit"}, headers=api.staff
    )
    await api.start("late", duration_minutes=30)
    shift_session(db, "late", test_start_time=timedelta(hours=1), last_heartbeat=timedelta(0))

    reply = (
        await bulk(
            api, action="extend", candidate_ids=["live", "done", "nobody", "late"], minutes=5
        )
    ).json()
    items = {i["candidate_id"]: i for i in reply["items"]}
    assert items["live"]["result"] == "changed"
    assert (items["done"]["result"], items["done"]["code"]) == ("refused", "session_ended")
    assert items["done"]["status"] == "completed"
    assert (items["nobody"]["result"], items["nobody"]["code"]) == ("refused", "not_found")
    assert (items["late"]["code"], items["late"]["status"]) == ("session_ended", "completed")
    assert (reply["changed"], reply["refused"]) == (1, 3)
    rows = dict(db.execute("SELECT candidate_id, extra_minutes FROM test_session").fetchall())
    assert rows == {"live": 5, "done": 0, "late": 0}


async def test_a_bulk_incident_flags_every_session_named(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    ids = running(db, 5)
    reply = (
        await bulk(
            api,
            action="incident",
            candidate_ids=ids,
            severity="high",
            reason_code="shared_answers",
            note="same wording",
        )
    ).json()
    assert reply["changed"] == 5
    assert set(event_counts(db, "incident").values()) == {1}
    live = (await api.client.get("/api/v1/live", headers=api.staff)).json()
    assert live["flagged"] == 5


async def test_the_filter_selects_by_status_and_start(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    for cid, hours in (("old", 5), ("mid", 3), ("new", 1)):
        await api.start(cid, duration_minutes=600)
        shift_session(db, cid, test_start_time=timedelta(hours=hours), last_heartbeat=timedelta(0))
    server_now = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    reply = (
        await bulk(
            api,
            action="extend",
            minutes=1,
            filter={
                "status": "active",
                "started_since": (server_now - timedelta(hours=4)).isoformat(),
                "started_until": (server_now - timedelta(hours=2)).isoformat(),
            },
        )
    ).json()
    assert [i["candidate_id"] for i in reply["items"]] == ["mid"]
    none = (await bulk(api, action="extend", minutes=1, filter={"status": "abandoned"})).json()
    assert none["requested"] == 0 and none["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"action": "extend", "minutes": 5},  # no sessions named
        {"action": "extend", "minutes": 5, "candidate_ids": ["a"], "filter": {}},  # both
        {"action": "extend", "minutes": 0, "candidate_ids": ["a"]},
        {"action": "extend", "minutes": "5", "candidate_ids": ["a"]},
        {"action": "end", "outcome": "delete", "candidate_ids": ["a"]},
        {"action": "incident", "severity": "low", "reason_code": "a b", "candidate_ids": ["a"]},
        {"action": "explode", "candidate_ids": ["a"]},
        {"action": "extend", "minutes": 5, "candidate_ids": ["a/b"]},
        {"action": "extend", "minutes": 5, "filter": {"started_since": "2024-01-01T00:00:00"}},
        {
            "action": "extend",
            "minutes": 5,
            "filter": {
                "started_since": "2024-02-01T00:00:00Z",
                "started_until": "2024-01-01T00:00:00Z",
            },
        },
    ],
)
async def test_bad_input_is_a_422_that_changes_nothing(
    api: Api, db: psycopg.Connection[Any], body: dict[str, Any]
) -> None:
    await api.start("a")
    assert_problem(await bulk(api, **body), 422, "validation_error")
    assert db.execute("SELECT extra_minutes, status FROM test_session").fetchall() == [
        (0, "active")
    ]


async def test_more_sessions_than_the_bound_is_refused_whole(
    api_with: Any, db: psycopg.Connection[Any]
) -> None:
    ids = running(db, 4)
    async with api_with(bulk_max_sessions=3) as api:
        named = await bulk(api, action="extend", minutes=5, candidate_ids=ids)
        assert assert_problem(named, 422, "validation_error")["limit"] == 3
        matched = await bulk(api, action="extend", minutes=5, filter={"status": "active"})
        assert_problem(matched, 422, "validation_error")
        ok = await bulk(api, action="extend", minutes=5, candidate_ids=ids[:3] + ids[:3])
        assert ok.json()["requested"] == 3
    assert db.execute(
        "SELECT extra_minutes, count(*) FROM test_session GROUP BY 1 ORDER BY 1"
    ).fetchall() == [(0, 1), (5, 3)]


async def test_a_candidate_token_may_not_act_in_bulk(api: Api) -> None:
    token = (await api.start("a"))["token"]
    response = await api.client.post(
        "/api/v1/sessions/bulk",
        json={"action": "end", "outcome": "terminate", "candidate_ids": ["a"]},
        headers=api.bearer(token),
    )
    assert_problem(response, 401, "unauthorized")


def test_settings_bound_the_set() -> None:
    assert make_settings().limits().max_bulk_sessions == 1000


async def test_a_bulk_pause_of_1000_running_sessions_pauses_each_once(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    ids = running(db, 1000)
    response = await bulk(api, action="pause", candidate_ids=ids, reason="fire alarm")
    assert response.status_code == 200, response.text
    reply = response.json()
    assert (reply["requested"], reply["changed"], reply["refused"]) == (1000, 1000, 0)
    assert [item["candidate_id"] for item in reply["items"]] == ids  # complete, in order
    assert db.execute(
        "SELECT count(*) FROM test_session WHERE paused_at IS NOT NULL AND status = 'active'"
    ).fetchone() == (1000,)
    counts = event_counts(db, "paused")
    assert len(counts) == 1000 and set(counts.values()) == {1}

    # again: each is paused already; refused one by one, nothing changes
    again = (await bulk(api, action="pause", candidate_ids=ids[:5], reason="x")).json()
    assert {(i["result"], i["code"]) for i in again["items"]} == {("refused", "already_paused")}
    assert set(event_counts(db, "paused").values()) == {1}
    resumed = (await bulk(api, action="resume", candidate_ids=ids[:5], reason="clear")).json()
    assert resumed["changed"] == 5
    assert db.execute("SELECT count(*) FROM test_session WHERE paused_at IS NULL").fetchone() == (
        5,
    )
