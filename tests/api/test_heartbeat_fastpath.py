"""The heartbeat's fast path (api/fastpath.py) answers exactly like the regular route, and
hands every unusual request to that route, which owns the error answers."""

from __future__ import annotations

from typing import Any

import psycopg

from apitools import Api, assert_problem
from invigilator.api.app import create_app  # noqa: F401  (the app under test is in `api`)


async def test_ordinary_heartbeat_answer_has_the_routes_shape(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice"))["token"]
    fast = await api.as_candidate("POST", "alice", "heartbeat", token, json={"active": True})
    assert fast.status_code == 200
    assert fast.headers["content-type"] == "application/json"
    body = fast.json()
    assert set(body) == {
        "status",
        "deadline",
        "remaining_seconds",
        "server_now",
        "next_heartbeat_seconds",
    }
    assert body["status"] == "active" and body["next_heartbeat_seconds"] == 15
    assert body["deadline"].endswith("Z")  # the same datetime form as every other answer
    # Through the regular route (an extra key makes the fast path step aside): same shape.
    slow = await api.as_candidate(
        "POST", "alice", "heartbeat", token, json={"active": False, "note": "x"}
    )
    assert slow.status_code == 200 and set(slow.json()) == set(body)
    assert fast.headers["x-content-type-options"] == "nosniff"  # middlewares still apply
    assert "x-request-id" in fast.headers
    row = db.execute("SELECT last_activity IS NOT NULL FROM test_session").fetchone()
    assert row == (True,)


async def test_unusual_heartbeats_get_the_routes_answers(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    bob = (await api.start("bob"))["token"]
    assert_problem(await api.client.post("/api/v1/sessions/alice/heartbeat"), 401, "unauthorized")
    assert_problem(
        await api.as_candidate("POST", "alice", "heartbeat", "not.a.token"), 401, "token_invalid"
    )
    assert_problem(await api.as_candidate("POST", "alice", "heartbeat", bob), 403, "forbidden")
    bad = await api.as_candidate("POST", "alice", "heartbeat", token, json={"active": [1]})
    assert_problem(bad, 422, "validation_error")
    garbage = await api.client.post(
        "/api/v1/sessions/alice/heartbeat",
        content=b"{not json",
        headers={**api.bearer(token), "Content-Type": "application/json"},
    )
    assert_problem(garbage, 422, "validation_error")
    await api.as_candidate("POST", "alice", "complete", token)
    ended = await api.as_candidate("POST", "alice", "heartbeat", token, json={"active": True})
    assert assert_problem(ended, 409, "session_ended")["completion_method"] == "manual"


async def test_a_large_body_is_replayed_intact_to_the_route(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    padded = {"active": True, "padding": "x" * 5000}
    response = await api.as_candidate("POST", "alice", "heartbeat", token, json=padded)
    assert response.status_code == 200  # the route read the whole body (extra keys ignored)
