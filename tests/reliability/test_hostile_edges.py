"""Hostile input found by trying the API as an attacker and as a careless client (issue 16):
odd token claims, ids and names that would collide with routes or break logs, numbers that do
not round-trip, lax booleans, content types, webhook URLs. Each is a 4xx problem+json with a
stable code and changes nothing; the database refuses the same ids and names on its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import jwt
import psycopg
import pytest
from faults import report

from invigilator.api import tokens
from invigilator.db.connector import constraint_name
from invigilator.validation import MAX_SEQ, is_candidate_id, is_name
from support.api import SECRET, Api, assert_problem
from support.db import CITUS_WORKERS


def snapshot(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute(
        "SELECT t.*, (SELECT count(*) FROM test_session_event),"
        " (SELECT count(*) FROM candidate), (SELECT count(*) FROM webhook_endpoint)"
        " FROM test_session t ORDER BY candidate_id"
    ).fetchall()


def forged(exp: Any, sub: str = "alice") -> str:
    """A token signed with the real key, with an `exp` no issued token has."""
    claims = {"sub": sub, "aud": tokens.AUDIENCE, "iat": datetime.now(UTC), "exp": exp}
    return jwt.encode(claims, SECRET, algorithm=tokens.ALGORITHM)


ODD_EXP = {
    "numeric_string": "99999999999",
    "float_past_9999": 253402300800.5,
    "huge_float": 1e300,
    "huge_int": 10**40,
    "negative_huge_int": -(10**40),
    "list": [1],
    "null": None,
}


@pytest.mark.parametrize("exp", ODD_EXP.values(), ids=ODD_EXP.keys())
async def test_tokens_with_odd_exp_are_401_token_invalid(
    api: Api, db: psycopg.Connection[Any], exp: Any
) -> None:
    await api.start("alice")
    before = snapshot(db)
    token = forged(exp)
    for method, path, body in (
        ("GET", "state", None),
        ("PATCH", "answers", {"answers": {"q1": "x"}, "seq": 1}),
        ("POST", "heartbeat", {"active": True}),
        ("POST", "complete", None),
    ):
        response = await api.as_candidate(method, "alice", path, token, json=body)
        problem = assert_problem(response, 401, response.json().get("code", ""))
        assert problem["code"] in {"token_invalid", "token_expired"}, (path, problem)
        if exp is not None and exp != -(10**40):  # one in the past may be "expired": fine
            assert problem["code"] == "token_invalid", (path, problem)
    beacon = await api.client.post(
        "/api/v1/sessions/alice/tab-close", content=json.dumps({"token": token})
    )
    assert beacon.status_code == 401
    assert snapshot(db) == before


# --- one rule for ids and names -------------------------------------------------------------

GOOD_IDS = [
    "0b6f2a8e-3d5c-4e1b-9a7f-2c8d4e6f8a1b",  # UUID
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # ULID
    "jane-doe_2024",  # slug
    "jane.doe+test@example.com",  # email
    "tenant:42",
    "live",  # a word that once was a route: an ordinary id now
    "events",
    "a",
    "x" * 36,
]
BAD_IDS = {
    "slash": "a/b",
    "dot_dot_slash": "../alice",
    "dot": ".",
    "dot_dot": "..",
    "space": "jane doe",
    "only_space": " ",
    "c1_nel": "a\u0085b",
    "c1_csi": "a\u009bb",
    "line_separator": "a\u2028b",
    "paragraph_separator": "a\u2029b",
    "trailing_newline": "alice\n",
    "tab": "a\tb",
    "percent": "a%2Fb",
    "question_mark": "a?b",
    "hash": "a#b",
    "backslash": "a\\b",
    "quote": "a'b",
    "non_ascii_letter": "jos\u00e9",
    "zero_width_space": "a\u200bb",
    "too_long": "x" * 37,
}


def test_the_rule_in_python_and_in_the_database_agree(db: psycopg.Connection[Any]) -> None:
    """validation.is_candidate_id and the database's invigilator_is_name say the same."""
    for value in [*GOOD_IDS, *BAD_IDS.values()]:
        (in_db,) = db.execute("SELECT invigilator_is_name(%s, 36)", (value,)).fetchone() or (None,)
        assert in_db == is_candidate_id(value), repr(value)
    assert all(is_candidate_id(v) for v in GOOD_IDS)
    assert not any(is_candidate_id(v) for v in BAD_IDS.values())
    assert is_name("q" * 128) and not is_name("q" * 129)


@pytest.mark.parametrize("candidate_id", GOOD_IDS)
async def test_ids_host_apps_use_work_on_every_route(api: Api, candidate_id: str) -> None:
    started = await api.start(candidate_id)
    token = started["token"]
    path = quote(candidate_id, safe="")
    saved = await api.as_candidate(
        "PATCH", path, "answers", token, json={"answers": {"q1": "x"}, "seq": 1}
    )
    assert saved.status_code == 200, saved.text
    beat = await api.as_candidate("POST", path, "heartbeat", token, json={"active": True})
    assert beat.status_code == 200, beat.text
    read = await api.client.get(f"/api/v1/sessions/{path}", headers=api.staff)
    assert read.status_code == 200, read.text
    assert read.json()["candidate_id"] == candidate_id  # the session, not some other route
    assert read.json()["pending_answers"] == {"q1": "x"}
    events = await api.client.get(f"/api/v1/sessions/{path}/events", headers=api.staff)
    assert events.status_code == 200 and events.json()["candidate_id"] == candidate_id


@pytest.mark.parametrize("candidate_id", BAD_IDS.values(), ids=BAD_IDS.keys())
async def test_bad_ids_are_refused_at_start_and_in_paths(
    api: Api, db: psycopg.Connection[Any], candidate_id: str
) -> None:
    await api.start("alice")
    before = snapshot(db)
    started = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": candidate_id, "create_candidate": True},
        headers=api.staff,
    )
    assert_problem(started, 422, "validation_error")
    quoted = quote(candidate_id, safe="")
    # `.` and `..` as path segments are resolved by every client before a request is sent.
    paths = [] if candidate_id in (".", "..") else [("GET", ""), ("GET", "/state")]
    for method, suffix in [*paths, ("GET", "/events"), ("POST", "/end")] if paths else []:
        response = await api.client.request(
            method, f"/api/v1/sessions/{quoted}{suffix}", headers=api.staff, json={}
        )
        assert 400 <= response.status_code < 500, (suffix, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert snapshot(db) == before


BAD_NAMES = {k: v for k, v in BAD_IDS.items() if k != "too_long"} | {"too_long": "q" * 129}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
async def test_bad_section_names_and_answer_keys_are_422(
    api: Api, db: psycopg.Connection[Any], name: str
) -> None:
    token = (await api.start("alice"))["token"]
    before = snapshot(db)
    planned = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": "bob", "create_candidate": True, "sections": ["a", name]},
        headers=api.staff,
    )
    assert_problem(planned, 422, "validation_error")
    section = await api.as_candidate("POST", "alice", "sections", token, json={"section": name})
    assert_problem(section, 422, "validation_error")
    saved = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {name: "x"}, "seq": 1}
    )
    assert_problem(saved, 422, "validation_error")
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO test_session (candidate_id) VALUES ('a/b')",
            "test_session_candidate_id_format",
        ),
        (
            "UPDATE test_session SET pending_answers = '{\"q\\u2028\": 1}' "
            "WHERE candidate_id = 'alice'",
            "test_session_names_format",
        ),
        (
            "UPDATE test_session SET sections_completed = '[\"..\"]' WHERE candidate_id = 'alice'",
            "test_session_names_format",
        ),
        (
            "UPDATE test_session SET planned_sections = '[\"a b\"]' WHERE candidate_id = 'alice'",
            "test_session_names_format",
        ),
        (
            "UPDATE test_session SET pending_answers = jsonb_build_object(E'q\\n', 1) "
            "WHERE candidate_id = 'alice'",
            "test_session_names_format",
        ),
    ],
    ids=["id_with_slash", "key_with_u2028", "section_dot_dot", "planned_with_space", "key_nl"],
)
async def test_the_database_refuses_bad_ids_and_names_itself(
    api: Api, db: psycopg.Connection[Any], statement: str, constraint: str
) -> None:
    """Whatever writes the table (a psql user, a host application), the rule holds."""
    await api.start("alice")
    db.execute("INSERT INTO candidate (candidate_id) VALUES ('a/b') ON CONFLICT DO NOTHING")
    before = snapshot(db)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        db.execute(statement)
    named = constraint_name(refused.value)
    if CITUS_WORKERS and not named:
        # Citus relays a worker's error without constraint_name, and a trigger's RAISE … USING
        # CONSTRAINT names it nowhere else: its message says which rule refused.
        assert constraint == "test_session_names_format"
        assert (refused.value.diag.message_primary or "").startswith(
            "a section name or answer key is not"
        )
    else:
        assert named == constraint
    assert snapshot(db) == before


async def test_heartbeats_do_not_run_the_name_trigger(db: psycopg.Connection[Any]) -> None:
    """The jsonb names are checked only when those columns are written (not on heartbeats)."""
    (events,) = db.execute(
        "SELECT string_agg(event_manipulation || ':' || coalesce(action_condition, ''), ',')"
        " FROM information_schema.triggers WHERE trigger_name = 'test_session_names_format'"
    ).fetchone() or ("",)
    assert "INSERT" in events and "UPDATE" in events
    (columns,) = db.execute(
        "SELECT array_agg(event_object_column::text ORDER BY event_object_column)"
        " FROM information_schema.triggered_update_columns"
        " WHERE trigger_name = 'test_session_names_format'"
    ).fetchone() or (None,)
    assert columns == ["pending_answers", "planned_sections", "sections_completed"]


# --- numbers round-trip, or are refused at the first save -----------------------------------

ROUND_TRIP = [
    0,
    -0.0,
    1,
    -1,
    MAX_SEQ,
    -MAX_SEQ,
    0.1,
    1 / 3,
    5.0,
    1e-7,
    1e-300,
    2.2250738585072014e-308,
    5e-324,
    123456789012345.67,
    float(MAX_SEQ),
    [1.5, {"x": 2.5e-10}],
]
REFUSED_NUMBERS = {
    "1e308": 1e308,
    "1.5e300": 1.5e300,
    "1.2345678901234567e29": 1.2345678901234567e29,
    "1e16": 1e16,
    "negative_1e20": -1e20,
    "nested_1e300": {"a": [1, 1e300]},
    "int_past_2_53": MAX_SEQ + 1,
}


async def test_numbers_in_answers_round_trip_exactly(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    answers = {f"n{i}": value for i, value in enumerate(ROUND_TRIP)}
    saved = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": answers, "seq": 1}
    )
    assert saved.status_code == 200, saved.text
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    stored = state["pending_answers"]
    for key, value in answers.items():
        assert stored[key] == value and type(stored[key]) is type(value), (key, stored[key])
    # And what the page read back, saved again (the client re-sends after a reload), is taken.
    again = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": stored, "seq": 2}
    )
    assert again.status_code == 200, again.text
    report("number_round_trip", values=len(ROUND_TRIP), refused=len(REFUSED_NUMBERS))


@pytest.mark.parametrize("value", REFUSED_NUMBERS.values(), ids=REFUSED_NUMBERS.keys())
async def test_numbers_that_would_not_round_trip_are_refused_at_the_first_save(
    api: Api, db: psycopg.Connection[Any], value: Any
) -> None:
    token = (await api.start("alice"))["token"]
    before = snapshot(db)
    saved = await api.as_candidate(
        "PATCH", "alice", "answers", token, json={"answers": {"q1": value}, "seq": 1}
    )
    assert_problem(saved, 422, "validation_error")
    assert snapshot(db) == before


# --- strict booleans ------------------------------------------------------------------------

LAX_BOOLEANS = ["yes", "true", 1, 0, "1", "on", None, [], {}]


@pytest.mark.parametrize("value", LAX_BOOLEANS, ids=[repr(v) for v in LAX_BOOLEANS])
async def test_booleans_are_strict(api: Api, db: psycopg.Connection[Any], value: Any) -> None:
    token = (await api.start("alice"))["token"]
    before = snapshot(db)
    beat = await api.as_candidate("POST", "alice", "heartbeat", token, json={"active": value})
    assert_problem(beat, 422, "validation_error")
    start = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": "bob", "create_candidate": value},
        headers=api.staff,
    )
    assert_problem(start, 422, "validation_error")
    hook = await api.client.post(
        "/api/v1/webhooks",
        json={"url": "https://example.com/hook", "include_answers": value},
        headers=api.staff,
    )
    assert_problem(hook, 422, "validation_error")
    assert snapshot(db) == before


# --- one content-type rule for the heartbeat ------------------------------------------------

HEARTBEAT_BODIES = [
    ("text/plain", b'{"active": true}', 422),
    ("text/plain;charset=UTF-8", b'{"active": false}', 422),
    ("application/x-www-form-urlencoded", b"active=true", 422),
    ("multipart/form-data; boundary=x", b'{"active": true}', 422),
    (None, b'{"active": true}', 422),
    ("application/json", b"  ", 422),
    ("application/json", b'{"active": true}', 200),
    ("application/json; charset=utf-8", b'{"active": true}', 200),
    ("application/merge-patch+json", b'{"active": true}', 200),
    ("text/plain", b"", 200),
    (None, b"", 200),
]


@pytest.mark.parametrize(("content_type", "body", "status"), HEARTBEAT_BODIES)
async def test_the_heartbeat_has_one_content_type_rule_on_both_paths(
    api_with: Any, content_type: str | None, body: bytes, status: int
) -> None:
    """The fast path and the route (the fast path off: INVIGILATOR_OTEL) answer alike."""
    answers = []
    for otel in (False, True):
        async with api_with(otel=otel) as api:
            token = (await api.start("alice"))["token"]
            headers = api.bearer(token)
            if content_type:
                headers["Content-Type"] = content_type
            response = await api.client.post(
                "/api/v1/sessions/alice/heartbeat", content=body, headers=headers
            )
            answers.append((response.status_code, response.json().get("code")))
    assert answers[0] == answers[1], answers
    assert answers[0][0] == status, answers


# --- webhook endpoint URLs ------------------------------------------------------------------

BAD_URLS = {
    "bracket_in_path": "http://example.com/[",
    "bracket_host": "http://[",
    "bracket_in_host": "http://exa[mple.com/",
    "unclosed_ipv6": "http://[::1/hook",
    "port_too_big": "http://example.com:99999/",
    "port_zero": "http://example.com:0/",
    "port_not_a_number": "http://example.com:http/",
    "port_negative": "http://example.com:-1/",
    "space": "http://example.com/a b",
    "leading_space": " http://example.com/",
    "crlf": "http://example.com/\r\nX-Injected: 1",
    "lf": "http://example.com/\n",
    "tab": "http://exam\tple.com/",
    "nul": "http://example.com/\u0000",
    "c1": "http://example.com/\u0085",
    "no_host": "http:///hook",
    "ftp": "ftp://example.com/",
    "javascript": "javascript:alert(1)",
}
GOOD_URLS = ["https://example.com/hook?x=1", "http://[::1]:8080/hook", "http://10.0.0.1:65535/"]


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
async def test_bad_webhook_urls_are_422(api: Api, db: psycopg.Connection[Any], url: str) -> None:
    before = snapshot(db)
    response = await api.client.post("/api/v1/webhooks", json={"url": url}, headers=api.staff)
    assert_problem(response, 422, "validation_error")
    assert snapshot(db) == before


async def test_good_webhook_urls_are_taken(api: Api) -> None:
    for url in GOOD_URLS:
        response = await api.client.post("/api/v1/webhooks", json={"url": url}, headers=api.staff)
        assert response.status_code == 201, (url, response.text)


def test_token_expiry_of_an_issued_token_still_round_trips() -> None:
    expires = datetime.now(UTC) + timedelta(hours=2)
    token = tokens.issue("alice", expires, SECRET, datetime.now(UTC))
    claims = tokens.verify(token, SECRET)
    assert claims.candidate_id == "alice"
    assert abs((claims.expires_at - expires).total_seconds()) < 1
