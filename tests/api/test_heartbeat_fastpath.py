"""The heartbeat's fast path (api/fastpath.py) answers exactly like the regular route, and
hands every unusual request to that route, which owns the error answers."""

from __future__ import annotations

from typing import Any

import psycopg

from invigilator.api.app import create_app  # noqa: F401  (the app under test is in `api`)
from support.api import Api, assert_problem


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
        "paused",
        "next_heartbeat_seconds",
    }
    assert body["status"] == "active" and body["next_heartbeat_seconds"] == 15
    assert body["paused"] is False
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


async def test_ordinary_heartbeats_are_answered_by_the_fast_path(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    fast_path = api.app.heartbeat_fast_path
    before = fast_path.answered
    for active in (True, False, None):
        body = {} if active is None else {"active": active}
        response = await api.as_candidate("POST", "alice", "heartbeat", token, json=body)
        assert response.status_code == 200
    empty = await api.as_candidate("POST", "alice", "heartbeat", token)
    assert empty.status_code == 200
    assert fast_path.answered == before + 4
    # An unusual one is the regular route's: the count does not move.
    odd = await api.as_candidate("POST", "alice", "heartbeat", token, json={"active": [1]})
    assert odd.status_code == 422
    extra = await api.as_candidate("POST", "alice", "heartbeat", token, json={"note": "x"})
    assert extra.status_code == 200
    assert fast_path.answered == before + 4


async def test_a_refused_heartbeat_is_answered_by_the_fast_path_itself(api: Api) -> None:
    """Once the heartbeat is the session's (a valid token, an ordinary body), its refusal is
    explained by the service and answered in the same pass: the route never runs it again."""
    token = (await api.start("carol"))["token"]
    await api.as_candidate("POST", "carol", "complete", token)
    before = api.app.heartbeat_fast_path.answered
    ended = await api.as_candidate("POST", "carol", "heartbeat", token)
    body = assert_problem(ended, 409, "session_ended")
    assert body["completion_method"] == "manual"
    assert api.app.heartbeat_fast_path.answered == before + 1
    assert ended.headers["x-content-type-options"] == "nosniff" and "x-request-id" in ended.headers


async def test_rate_limit_on_the_fast_path_counts_once_and_answers_like_the_middleware(
    api_with: Any,
) -> None:
    async with api_with(
        rate_limit_candidate_per_minute=1, rate_limit_candidate_burst=3, rate_limit_ip_per_minute=0
    ) as api:
        token = (await api.start("alice"))["token"]
        statuses = [
            (await api.as_candidate("POST", "alice", "heartbeat", token)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 200]  # the burst, each counted once
        limited = await api.as_candidate("POST", "alice", "heartbeat", token)
        body = assert_problem(limited, 429, "rate_limited")
        assert body["limit"] == "candidate"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-content-type-options"] == "nosniff"
        assert "x-request-id" in limited.headers
        # A refused session's heartbeat goes on to the route: it is not counted a second time.
    async with api_with(
        rate_limit_candidate_per_minute=1, rate_limit_candidate_burst=2, rate_limit_ip_per_minute=0
    ) as api:
        token = (await api.start("bob"))["token"]
        await api.as_candidate("POST", "bob", "complete", token)  # one of the two
        ended = await api.as_candidate("POST", "bob", "heartbeat", token)
        assert_problem(ended, 409, "session_ended")  # the second: not a 429


async def test_cross_origin_heartbeats_get_the_cors_headers(api_with: Any) -> None:
    """Browsers send Origin with every POST, same-origin ones included: the fast path answers
    them with the app's own CORS rules."""
    origin = "https://exam.example"
    async with api_with(cors_origins=[origin]) as api:
        token = (await api.start("alice"))["token"]
        before = api.app.heartbeat_fast_path.answered

        async def beat(**headers: str) -> Any:
            return await api.client.post(
                "/api/v1/sessions/alice/heartbeat",
                json={"active": True},
                headers={**api.bearer(token), **headers},
            )

        allowed = await beat(Origin=origin)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "Origin" in allowed.headers["vary"]
        other = await beat(Origin="https://elsewhere.example")
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers
        assert "Origin" in other.headers["vary"]
        assert api.app.heartbeat_fast_path.answered == before + 2
        # The regular route answers the same way (an extra key sends it there).
        routed = await api.client.post(
            "/api/v1/sessions/alice/heartbeat",
            json={"active": True, "note": "x"},
            headers={**api.bearer(token), "Origin": origin},
        )
        assert routed.headers["access-control-allow-origin"] == origin
        assert api.app.heartbeat_fast_path.answered == before + 2


async def test_a_body_larger_than_a_heartbeat_goes_to_the_route_whole(api_with: Any) -> None:
    async with api_with(max_body_bytes=1024) as api:
        token = (await api.start("alice"))["token"]
        padded = b'{"active": true}' + b" " * 4000  # one piece, over the body limit
        response = await api.client.post(
            "/api/v1/sessions/alice/heartbeat",
            content=padded,
            headers={**api.bearer(token), "Content-Type": "application/json"},
        )
        assert_problem(response, 413, "payload_too_large")
        nested = await api.client.post(
            "/api/v1/sessions/alice/heartbeat",
            content=b"[" * 200,
            headers={**api.bearer(token), "Content-Type": "application/json"},
        )
        assert_problem(nested, 422, "validation_error")
