"""Hostile and malformed input.

- Schemathesis generates valid and invalid requests for every operation of /openapi.json and
  sends them to the in-process app: never a 5xx, every error a problem+json, and every 2xx
  matches the documented response schema.
- Explicit cases that tests/api/test_errors_and_limits.py does not already cover: each gets a
  4xx with a stable code and changes nothing in the database."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import schemathesis
from faults import report
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from invigilator.api.app import create_app
from invigilator.db.connector import translate_errors
from invigilator.domain import InvalidInput
from support.api import STAFF_KEY, Api, assert_problem, make_settings
from support.db import ANSWERS

# Per operation and generation mode (valid, invalid): ~400 requests in all, ~20 s, most of it
# spent generating them. INVIGILATOR_FUZZ_EXAMPLES=50 INVIGILATOR_FUZZ_RANDOM=1 runs deeper.
EXAMPLES_PER_OPERATION = int(os.environ.get("INVIGILATOR_FUZZ_EXAMPLES", "6"))
CANDIDATE = "fuzz-alice"
PROBLEM_KEYS = {"type", "title", "status", "code", "detail"}


def ensure_running_session(db: psycopg.Connection[Any]) -> None:
    """Keep the fuzzed candidate's session running, so most requests reach the database."""
    if db.execute(
        "SELECT 1 FROM test_session WHERE candidate_id = %s AND status = 'active'", (CANDIDATE,)
    ).fetchone():
        return
    db.execute("DELETE FROM candidate WHERE candidate_id = %s", (CANDIDATE,))
    db.execute("INSERT INTO candidate (candidate_id) VALUES (%s)", (CANDIDATE,))
    db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (CANDIDATE,))


def fuzzer(
    operation: Any,
    mode: GenerationMode,
    db: psycopg.Connection[Any],
    token: str,
    statuses: Counter[int],
) -> Any:
    """A hypothesis test sending EXAMPLES_PER_OPERATION generated requests to `operation`:
    half with the fuzzed candidate's id and token (so they reach the database), the rest with
    generated ids and the staff key."""
    candidate_route = "candidate" in (operation.tags or [])

    @given(case=operation.as_strategy(generation_mode=mode), own=st.booleans())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # report, do not shrink
        # The same requests on every CI run; INVIGILATOR_FUZZ_RANDOM=1 explores new ones.
        derandomize=not os.environ.get("INVIGILATOR_FUZZ_RANDOM"),
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, own: bool) -> None:
        ensure_running_session(db)
        if own and "candidate_id" in (case.path_parameters or {}):
            case.path_parameters["candidate_id"] = CANDIDATE
        credential = token if candidate_route and own else STAFF_KEY
        response = case.call(headers={"Authorization": f"Bearer {credential}"})
        statuses[response.status_code] += 1
        where = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, f"{where}: {response.text[:300]}"
        if response.status_code >= 400:
            content_type = response.headers.get("content-type", [""])[0]
            assert content_type.startswith("application/problem+json"), where
            body = json.loads(response.content)
            assert body.keys() >= PROBLEM_KEYS, where
            assert body["status"] == response.status_code, where
        elif 200 <= response.status_code < 300:
            case.validate_response(response, checks=[response_schema_conformance])

    return fuzz


def test_generated_requests_never_get_a_5xx_and_errors_are_problem_json(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    # No rate limits here: they would turn most generated requests into 429s.
    app_settings = make_settings(rate_limit_candidate_per_minute=0, rate_limit_ip_per_minute=0)
    app = create_app(app_settings, database_url=db_url)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    unfuzzable: list[str] = []
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        with schemathesis_asgi.get_client(app) as client:
            started = client.post(
                "/api/v1/sessions",
                json={"candidate_id": CANDIDATE, "create_candidate": True},
                headers={"Authorization": f"Bearer {STAFF_KEY}"},
            )
            assert started.status_code == 201, started.text
            token = started.json()["token"]

        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 11
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzzer(operation, mode, db, token, statuses)()
                except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                    unfuzzable.append(f"{operation.label} [{mode.value}]")
                except Exception as exc:  # collect every operation's failure, then report
                    failures.append(f"{operation.label} [{mode.value}]: {exc}"[:2000])
    finally:
        schemathesis_asgi.shutdown_lifespans()
    report(
        "schemathesis",
        operations=len(operations),
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        no_invalid_form=unfuzzable,
    )
    assert failures == [], "\n".join(failures)
    assert sum(n for s, n in statuses.items() if s >= 500) == 0
    assert sum(n for s, n in statuses.items() if 200 <= s < 300) > 0  # it got past validation


# --- explicit cases -------------------------------------------------------------------------


def snapshot(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute(
        "SELECT t.*, (SELECT count(*) FROM test_session_event),"
        " (SELECT count(*) FROM candidate) FROM test_session t ORDER BY candidate_id"
    ).fetchall()


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


HOSTILE_SAVES = {
    "nul_deep_inside": '{"answers": {"q1": {"a": ["x", "y\\u0000"]}}, "seq": 1}',
    "nul_in_nested_key": '{"answers": {"q1": {"k\\u0000": 1}}, "seq": 1}',
    "lone_low_surrogate": '{"answers": {"q1": "\\udc00"}, "seq": 1}',
    "lone_surrogate_in_key": '{"answers": {"\\ud83d": "x"}, "seq": 1}',
    "lone_surrogate_nested_key": '{"answers": {"q1": {"\\ud83d": 1}}, "seq": 1}',
    "very_deep_objects": '{"answers": {"q1": ' + deep(5000) + '}, "seq": 1}',
    "deep_just_over_limit": '{"answers": {"q1": ' + deep(17) + '}, "seq": 1}',
    "huge_float": '{"answers": {"q1": 1e400}, "seq": 1}',
    "huge_negative_int": '{"answers": {"q1": -99999999999999999999999}, "seq": 1}',
    "seq_above_2_53": '{"answers": {"q1": "x"}, "seq": 9007199254740992}',
    "seq_float": '{"answers": {"q1": "x"}, "seq": 1.5}',
    "seq_bool": '{"answers": {"q1": "x"}, "seq": true}',
    "seq_numeric_string": '{"answers": {"q1": "x"}, "seq": "5"}',
    "seq_whole_float": '{"answers": {"q1": "x"}, "seq": 5.0}',
    "seq_null": '{"answers": {"q1": "x"}, "seq": null}',
    "seq_missing": '{"answers": {"q1": "x"}}',
    "answers_null": '{"answers": null, "seq": 1}',
    "body_is_array": '[{"answers": {"q1": "x"}, "seq": 1}]',
    "body_is_string": '"answers"',
    "empty_body": "",
    "truncated_json": '{"answers": {"q1": "x"',
    "question_too_long": '{"answers": {"' + "q" * 129 + '": 1}, "seq": 1}',
    "question_empty": '{"answers": {"": 1}, "seq": 1}',
    "question_newline": '{"answers": {"q\\n1": 1}, "seq": 1}',
    "too_many_questions": json.dumps({"answers": {f"q{i}": i for i in range(201)}, "seq": 1}),
    "invalid_utf8": b'{"answers": {"q1": "\xff\xfe"}, "seq": 1}'.decode("latin-1"),
}


@pytest.mark.parametrize("body", HOSTILE_SAVES.values(), ids=HOSTILE_SAVES.keys())
async def test_hostile_answer_saves_are_4xx_and_change_nothing(
    api: Api, db: psycopg.Connection[Any], body: str
) -> None:
    token = (await api.start("alice"))["token"]
    before = snapshot(db)
    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=body.encode("latin-1") if body.startswith('{"answers": {"q1": "\xff') else body,
        headers={**api.bearer(token), "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    code = response.json()["code"]
    assert code in {"validation_error", "bad_request", "payload_too_large"}, code
    assert snapshot(db) == before


SQL_META = [
    "'; DROP TABLE test_session; --",
    '" OR 1=1 --',
    "$$; SELECT pg_sleep(5); $$",
    "%s%(x)s",
]


@pytest.mark.parametrize("meta", SQL_META)
async def test_sql_meta_characters_are_data_everywhere(
    api: Api, db: psycopg.Connection[Any], meta: str
) -> None:
    """In an answer and a reason: stored as text, never interpreted. In a candidate_id, a
    section or a question they are outside the names' alphabet (validation.NAME_CHARACTERS):
    refused as invalid, and nothing changes."""
    before = snapshot(db)
    refused = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": meta[:36], "create_candidate": True},
        headers=api.staff,
    )
    assert_problem(refused, 422, "validation_error")
    planned = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": "meta-1", "create_candidate": True, "sections": [meta]},
        headers=api.staff,
    )
    assert_problem(planned, 422, "validation_error")
    assert snapshot(db) == before
    token = (await api.start("meta-1", sections=["s1"]))["token"]
    question = await api.as_candidate(
        "PATCH", "meta-1", "answers", token, json={"answers": {meta: 1}, "seq": 1}
    )
    assert_problem(question, 422, "validation_error")
    section = await api.as_candidate("POST", "meta-1", "sections", token, json={"section": meta})
    assert_problem(section, 422, "validation_error")
    saved = await api.as_candidate(
        "PATCH", "meta-1", "answers", token, json={"answers": {"q1": meta}, "seq": 1}
    )
    assert saved.status_code == 200, saved.text
    extended = await api.client.post(
        "/api/v1/sessions/meta-1/extend", json={"minutes": 1, "reason": meta}, headers=api.staff
    )
    assert extended.status_code == 200, extended.text
    row = db.execute(
        "SELECT "
        f"{ANSWERS} AS pending_answers, sections_completed"
        " FROM test_session WHERE candidate_id = %s",
        ("meta-1",),
    ).fetchone()
    assert row == ({"q1": meta}, [])
    (reason,) = db.execute(
        "SELECT detail->>'reason' FROM test_session_event WHERE type = 'time_extended'"
    ).fetchone() or (None,)
    assert reason == meta
    assert db.execute("SELECT count(*) FROM test_session").fetchone() == (1,)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "extend", {"minutes": -5}),
        ("POST", "extend", {"minutes": 0}),
        ("POST", "extend", {"minutes": 10**12}),
        ("POST", "extend", {"minutes": 1441}),
        ("POST", "extend", {"minutes": "10; DROP TABLE x"}),
        ("POST", "extend", {"minutes": True}),
        ("POST", "extend", {"minutes": "30"}),
        ("POST", "extend", {"minutes": 5, "reason": "r" * 501}),
        ("POST", "end", {"outcome": "explode"}),
        ("POST", "end", {}),
    ],
)
async def test_absurd_staff_inputs_are_422_and_change_nothing(
    api: Api, db: psycopg.Connection[Any], method: str, path: str, body: dict[str, Any]
) -> None:
    await api.start("alice")
    before = snapshot(db)
    response = await api.client.request(
        method, f"/api/v1/sessions/alice/{path}", json=body, headers=api.staff
    )
    assert_problem(response, 422, "validation_error")
    assert snapshot(db) == before


async def test_extensions_past_the_total_cap_are_refused(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await api.start("alice")
    for _ in range(2):
        ok = await api.client.post(
            "/api/v1/sessions/alice/extend", json={"minutes": 700}, headers=api.staff
        )
        assert ok.status_code == 200
    before = snapshot(db)
    over = await api.client.post(
        "/api/v1/sessions/alice/extend", json={"minutes": 41}, headers=api.staff
    )
    assert_problem(over, 422, "validation_error")
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "candidate_id",
    [
        "a" * 37,
        "a" * 1000,
        "nul\u0000id",
        "del\u007fid",
        "esc\u001b[31mred",
        "",
        " ",
    ],
    ids=["37_chars", "1000_chars", "nul", "del", "ansi_escape", "empty", "space"],
)
async def test_bad_candidate_ids_in_bodies_and_paths_are_4xx(
    api: Api, db: psycopg.Connection[Any], candidate_id: str
) -> None:
    before = snapshot(db)
    started = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": candidate_id, "create_candidate": True},
        headers=api.staff,
    )
    assert_problem(started, 422, "validation_error")
    if candidate_id:
        quoted = quote(candidate_id, safe="")
        for path in (f"{quoted}/state", f"{quoted}"):
            response = await api.client.get(f"/api/v1/sessions/{path}", headers=api.staff)
            assert 400 <= response.status_code < 500
            assert response.headers["content-type"].startswith("application/problem+json")
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
async def test_json_routes_refuse_other_content_types(
    api: Api, db: psycopg.Connection[Any], content_type: str
) -> None:
    token = (await api.start("alice"))["token"]
    before = snapshot(db)
    headers = {**api.bearer(token)}
    if content_type:
        headers["Content-Type"] = content_type
    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=b'{"answers": {"q1": "x"}, "seq": 1}',
        headers=headers,
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert snapshot(db) == before


async def test_a_50_mb_body_is_refused_without_reading_it(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    sent = 0

    async def fifty_megabytes() -> Any:
        nonlocal sent
        chunk = b"x" * (1024 * 1024)
        for _ in range(50):
            sent += len(chunk)
            yield chunk

    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=fifty_megabytes(),
        headers={**api.bearer(token), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "payload_too_large")
    assert sent < 50 * 1024 * 1024  # it stopped reading at the limit


async def test_hostile_tab_close_beacons_are_4xx(api: Api, db: psycopg.Connection[Any]) -> None:
    await api.start("alice")
    before = snapshot(db)
    for body in (
        b"",
        b"{",
        b'{"token": 5}',
        b'{"token": "' + b"x" * 10_000 + b'"}',
        b"x" * 5000,
        b"\xff\xfe\x00",
        b"token with spaces",
    ):
        response = await api.client.post(
            "/api/v1/sessions/alice/tab-close",
            content=body,
            headers={"Content-Type": "text/plain"},
        )
        assert_problem(response, 401, response.json()["code"])
        assert response.json()["code"] in {"unauthorized", "token_invalid"}
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        ("SELECT %s::bigint", 2**70),  # an id past bigint (found by Schemathesis: was a 500)
        ("SELECT %s::text", "a\x00b"),  # NUL, refused by psycopg before sending (was a 500)
        ("SELECT %s::int", "12abc"),
    ],
    ids=["bigint_overflow", "nul_text_parameter", "not_a_number"],
)
def test_bad_values_reaching_the_database_are_invalid_input(
    db: psycopg.Connection[Any], statement: str, value: object
) -> None:
    """Whatever route forgets a bound, `translate_errors` turns the database's refusal of a
    value into a 422 validation_error, not a 500."""
    with pytest.raises(InvalidInput), translate_errors():
        db.execute(statement, (value,))
