"""Who may do what: staff keys, candidate tokens bound to one session, expiry, rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from invigilator.api import tokens
from support.api import SECRET, STAFF_KEY, Api, assert_problem

CANDIDATE_ROUTES = [
    ("GET", "state", None),
    ("POST", "heartbeat", {}),
    ("POST", "activity", None),
    ("POST", "events", {"type": "focus_lost"}),
    ("POST", "sections", {"section": "a"}),
    ("PATCH", "answers", {"answers": {"q": 1}, "seq": 1}),
    ("POST", "complete", None),
]
STAFF_ROUTES = [
    ("POST", "/api/v1/sessions", {"candidate_id": "x", "create_candidate": True}),
    ("GET", "/api/v1/sessions", None),
    ("GET", "/api/v1/sessions/alice", None),
    ("GET", "/api/v1/sessions/alice/events", None),
    ("POST", "/api/v1/sessions/alice/extend", {"minutes": 5}),
    ("POST", "/api/v1/sessions/alice/end", {"outcome": "submit"}),
]


@pytest.mark.parametrize(("method", "path", "body"), CANDIDATE_ROUTES)
async def test_candidate_routes_need_a_token(
    api: Api, method: str, path: str, body: object
) -> None:
    await api.start("alice")
    response = await api.client.request(method, f"/api/v1/sessions/alice/{path}", json=body)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), CANDIDATE_ROUTES)
async def test_another_candidates_token_opens_nothing(
    api: Api, method: str, path: str, body: object
) -> None:
    await api.start("alice")
    bob = (await api.start("bob"))["token"]
    response = await api.as_candidate(method, "alice", path, bob, json=body)
    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize(("method", "path", "body"), CANDIDATE_ROUTES)
async def test_tampered_expired_and_other_secret_tokens_fail(
    api: Api, method: str, path: str, body: object
) -> None:
    token = (await api.start("alice"))["token"]
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    now = datetime.now(UTC)
    expired = tokens.issue("alice", now - timedelta(seconds=1), SECRET, now - timedelta(hours=2))
    foreign = tokens.issue(
        "alice", now + timedelta(hours=1), "another-secret-entirely-0123456789abcdef", now
    )
    assert_problem(
        await api.as_candidate(method, "alice", path, tampered, json=body), 401, "token_invalid"
    )
    assert_problem(
        await api.as_candidate(method, "alice", path, expired, json=body), 401, "token_expired"
    )
    assert_problem(
        await api.as_candidate(method, "alice", path, foreign, json=body), 401, "token_invalid"
    )


@pytest.mark.parametrize(("method", "path", "body"), STAFF_ROUTES)
async def test_staff_routes_refuse_candidate_tokens_and_wrong_keys(
    api: Api, method: str, path: str, body: object
) -> None:
    token = (await api.start("alice"))["token"]
    for credential in (token, "wrong-key", STAFF_KEY + "x", ""):
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        response = await api.client.request(method, path, json=body, headers=headers)
        assert_problem(response, 401, "unauthorized")


async def test_every_configured_staff_key_works(api: Api) -> None:
    from support.api import OTHER_STAFF_KEY

    for key in (STAFF_KEY, OTHER_STAFF_KEY):
        response = await api.client.get(
            "/api/v1/sessions", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200


async def test_staff_may_read_a_candidates_state(api: Api) -> None:
    await api.start("alice")
    response = await api.client.get("/api/v1/sessions/alice/state", headers=api.staff)
    assert response.status_code == 200


async def test_rotating_the_secret_invalidates_old_tokens(api_with: object) -> None:
    from pydantic import SecretStr

    async with api_with() as api:  # type: ignore[operator]
        token = (await api.start("alice"))["token"]
        assert (await api.as_candidate("POST", "alice", "heartbeat", token)).status_code == 200
    async with api_with(secret_key=SecretStr("a-brand-new-secret-after-rotation")) as api:  # type: ignore[operator]
        response = await api.as_candidate("POST", "alice", "heartbeat", token)
        assert_problem(response, 401, "token_invalid")
        fresh = (await api.start("alice"))["token"]  # staff re-issue a token
        assert (await api.as_candidate("POST", "alice", "heartbeat", fresh)).status_code == 200


async def test_token_expiry_outlives_the_longest_possible_session(api: Api) -> None:
    data = await api.start("alice", duration_minutes=60)
    expires = datetime.fromisoformat(data["token_expires_at"])
    deadline = datetime.fromisoformat(data["deadline"])
    assert expires - deadline >= timedelta(minutes=24 * 60)
