"""Bad input gets a 4xx problem+json with a stable code and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from support.api import Api, assert_problem
from support.db import ANSWERS, SEQS


def snapshot(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute(
        "SELECT candidate_id, "
        f"{ANSWERS} AS pending_answers, "
        f"{SEQS} AS answer_seq, sections_completed, updated_at, "
        "(SELECT count(*) FROM test_session_event) FROM test_session ORDER BY 1"
    ).fetchall()


BAD_ANSWER_BODIES = {
    "nul_in_value": '{"answers": {"q1": "a\\u0000b"}, "seq": 1}',
    "nul_in_key": '{"answers": {"q\\u0000": "x"}, "seq": 1}',
    "lone_surrogate": '{"answers": {"q1": "\\ud800"}, "seq": 1}',
    "negative_seq": '{"answers": {"q1": "x"}, "seq": -1}',
    "huge_seq": '{"answers": {"q1": "x"}, "seq": 1e300}',
    "giant_int": '{"answers": {"q1": 123456789012345678901234567890}, "seq": 1}',
    "nan": '{"answers": {"q1": NaN}, "seq": 1}',
    "empty_answers": '{"answers": {}, "seq": 1}',
    "answers_not_object": '{"answers": ["q1"], "seq": 1}',
    "deep_nesting": '{"answers": {"q1": ' + "[" * 40 + "]" * 40 + '}, "seq": 1}',
    "sql_meta_key": '{"answers": {"q1\'; DROP TABLE test_session; --": "x"}, "seq": "1; --"}',
    "not_json": "answers=1",
    "control_char_key": '{"answers": {"q\\u0007": "x"}, "seq": 1}',
}


@pytest.mark.parametrize("body", BAD_ANSWER_BODIES.values(), ids=BAD_ANSWER_BODIES.keys())
async def test_bad_answer_saves_are_4xx_and_change_nothing(
    api: Api, db: psycopg.Connection[Any], body: str
) -> None:
    token = (await api.start("alice"))["token"]
    before = snapshot(db)
    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=body,
        headers={**api.bearer(token), "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] in {"validation_error", "bad_request", "payload_too_large"}
    assert snapshot(db) == before


async def test_a_body_over_the_limit_is_413_before_it_is_read(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    huge = json.dumps({"answers": {"q1": "x" * (3 * 1024 * 1024)}, "seq": 1})
    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=huge,
        headers={**api.bearer(token), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "payload_too_large")


async def test_a_streamed_body_without_length_is_cut_at_the_limit(api: Api) -> None:
    token = (await api.start("alice"))["token"]

    async def chunks() -> Any:
        for _ in range(50):
            yield b"x" * (64 * 1024)

    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=chunks(),
        headers={**api.bearer(token), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "payload_too_large")


async def test_one_answer_over_its_limit_is_413(api_with: Any) -> None:
    async with api_with(max_answer_bytes=100) as api:
        token = (await api.start("alice"))["token"]
        response = await api.as_candidate(
            "PATCH", "alice", "answers", token, json={"answers": {"q1": "x" * 200}, "seq": 1}
        )
        assert_problem(response, 413, "payload_too_large")


async def test_total_answers_over_the_limit_is_413_and_keeps_the_old_ones(
    api_with: Any, db: psycopg.Connection[Any]
) -> None:
    async with api_with(max_answers_bytes=2048, max_answer_bytes=1500) as api:
        token = (await api.start("alice"))["token"]
        ok = await api.as_candidate(
            "PATCH", "alice", "answers", token, json={"answers": {"q1": "x" * 1200}, "seq": 1}
        )
        assert ok.status_code == 200
        over = await api.as_candidate(
            "PATCH", "alice", "answers", token, json={"answers": {"q2": "y" * 1200}, "seq": 2}
        )
        assert_problem(over, 413, "payload_too_large")
        answers = db.execute(f"SELECT {ANSWERS} FROM test_session").fetchone()
        assert answers == ({"q1": "x" * 1200},)


@pytest.mark.parametrize(
    "candidate_id",
    ["x" * 37, "bad\u0001id", "tab\there"],
    ids=["too_long", "control_char", "tab"],
)
async def test_bad_candidate_ids_are_422(api: Api, candidate_id: str) -> None:
    response = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": candidate_id, "create_candidate": True},
        headers=api.staff,
    )
    assert_problem(response, 422, "validation_error")


async def test_bad_path_candidate_id_is_422_not_500(api: Api) -> None:
    response = await api.client.get("/api/v1/sessions/" + "y" * 40, headers=api.staff)
    assert_problem(response, 422, "validation_error")


async def test_too_many_sections_and_bad_durations_are_422(api_with: Any) -> None:
    async with api_with(max_sections=3) as api:
        for body in (
            {"candidate_id": "a", "sections": ["1", "2", "3", "4"]},
            {"candidate_id": "a", "duration_minutes": 0},
            {"candidate_id": "a", "duration_minutes": 100000},
            {"candidate_id": "a", "duration_minutes": "sixty"},
        ):
            response = await api.client.post(
                "/api/v1/sessions", json={**body, "create_candidate": True}, headers=api.staff
            )
            assert_problem(response, 422, "validation_error")


async def test_wrong_content_type_is_a_4xx(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    response = await api.client.patch(
        "/api/v1/sessions/alice/answers",
        content=b"\x00\x01\x02",
        headers={**api.bearer(token), "Content-Type": "application/octet-stream"},
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_unknown_route_and_method_are_problem_json(api: Api) -> None:
    assert_problem(await api.client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_problem(
        await api.client.delete("/api/v1/sessions", headers=api.staff), 405, "method_not_allowed"
    )


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}


async def test_openapi_and_security_headers(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    for path in (
        "/api/v1/sessions",
        "/api/v1/sessions/{candidate_id}",
        "/api/v1/sessions/{candidate_id}/extend",
        "/api/v1/sessions/{candidate_id}/end",
        "/api/v1/sessions/{candidate_id}/state",
        "/api/v1/sessions/{candidate_id}/heartbeat",
        "/api/v1/sessions/{candidate_id}/activity",
        "/api/v1/sessions/{candidate_id}/sections",
        "/api/v1/sessions/{candidate_id}/answers",
        "/api/v1/sessions/{candidate_id}/complete",
        "/api/v1/sessions/{candidate_id}/tab-close",
    ):
        assert path in spec["paths"], path
    response = await api.client.get("/healthz")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
