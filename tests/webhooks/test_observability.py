"""Operations: GET /metrics (protected, or on its own port), request ids, and one JSON log
line per request that never carries tokens, keys or answers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from invigilator.logs import configure_logging, redact
from support.api import SECRET, STAFF_KEY, Api, assert_problem, make_settings
from support.ports import free_port
from support.webhooks import serving

HEARTBEAT_ROUTE = "/api/v1/sessions/{candidate_id}/heartbeat"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(api: Api) -> dict[Any, float]:
    response = await api.client.get("/metrics", headers=api.staff)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_are_protected_and_describe_the_service(db_url: str) -> None:
    async with serving(db_url, metrics_key=SecretStr("scraper-key-0123456789")) as api:
        assert_problem(await api.client.get("/metrics"), 401, "unauthorized")
        wrong = await api.client.get("/metrics", headers=api.bearer("nope"))
        assert_problem(wrong, 401, "unauthorized")
        scraper = await api.client.get("/metrics", headers=api.bearer("scraper-key-0123456789"))
        assert scraper.status_code == 200
        before = await scrape(api)

        token = (await api.start("cand-m"))["token"]
        for _ in range(3):
            beat = await api.as_candidate("POST", "cand-m", "heartbeat", token)
            assert beat.status_code == 200
        after = await scrape(api)

    labels = {"method": "POST", "route": HEARTBEAT_ROUTE, "status": "200"}
    assert (
        value(after, "invigilator_http_requests_total", **labels)
        - value(before, "invigilator_http_requests_total", **labels)
        == 3
    )
    assert (
        value(after, "invigilator_heartbeats_total") - value(before, "invigilator_heartbeats_total")
        == 3
    )
    hist = {"method": "POST", "route": HEARTBEAT_ROUTE}
    assert value(after, "invigilator_http_request_duration_seconds_count", **hist) >= 3
    assert value(after, "invigilator_active_sessions") == 1  # this database's one session
    assert value(after, "invigilator_db_pool_max") == 4  # make_settings' pool
    assert value(after, "invigilator_db_pool_size") >= 1
    names = {name for name, _ in after}
    for name in (
        "invigilator_webhook_pending",
        "invigilator_sweeper_passes_total",
        "invigilator_db_pool_available",
        "invigilator_db_pool_requests_waiting",
        "invigilator_http_requests_in_progress",
    ):
        assert name in names, name
    # route templates, never ids: bounded label values and nothing personal in metrics
    routes = {dict(lbl).get("route", "") for _, lbl in after}
    assert not any("cand-m" in r for r in routes)


async def test_metrics_public_when_configured(db_url: str) -> None:
    async with serving(db_url, metrics_public=True) as api:
        assert (await api.client.get("/metrics")).status_code == 200


async def test_metrics_on_a_separate_port(db_url: str) -> None:
    port = free_port()
    async with serving(db_url, metrics_port=port) as api:
        assert (await api.client.get("/metrics", headers=api.staff)).status_code == 404
        await api.start("cand-p")
        async with httpx.AsyncClient() as plain:
            response = await plain.get(f"http://127.0.0.1:{port}/metrics")
            missing = await plain.get(f"http://127.0.0.1:{port}/other")
    assert response.status_code == 200
    assert value(samples(response.text), "invigilator_active_sessions") == 1
    assert missing.status_code == 404


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything logged, as `invigilator serve` logs it off a TTY (JSON lines)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    configure_logging(make_settings(log_format="auto", log_level="DEBUG"), stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved


async def test_one_json_line_per_request_with_its_id_and_no_secrets(
    db_url: str, log_output: io.StringIO
) -> None:
    answer = "my-very-private-answer-7f3a"
    async with serving(db_url) as api:
        started = await api.start("cand-log")
        token = started["token"]
        responses = [
            await api.as_candidate(
                "PATCH", "cand-log", "answers", token, json={"answers": {"q1": answer}, "seq": 1}
            ),
            await api.as_candidate(
                "PATCH", "cand-log", "answers", token, json={"answers": {"q2": answer}, "seq": -5}
            ),  # a 422 that echoes nothing of the body into the log
            await api.client.post(
                "/api/v1/sessions/cand-log/heartbeat",
                headers={**api.bearer(token), "X-Request-ID": "req-from-proxy.42"},
            ),
            await api.client.post(
                "/api/v1/sessions/cand-log/heartbeat",
                headers={**api.bearer(token), "X-Request-ID": "not a sane id" * 20},
            ),
            await api.client.post(
                "/api/v1/sessions/cand-log/tab-close",
                content=json.dumps({"token": token}),
                headers={"Content-Type": "text/plain"},
            ),
            await api.client.get("/api/v1/sessions/cand-log", headers=api.staff),
        ]
    text = log_output.getvalue()
    for secret in (token, STAFF_KEY, SECRET, answer):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "invigilator.access"]
    assert len(access) == 7  # the start, and the six above: one line each
    for line, response in zip(access[1:], responses, strict=True):
        assert line["request_id"] == response.headers["X-Request-ID"]
        assert line["status"] == response.status_code
        assert line["method"] == response.request.method
        assert isinstance(line["duration_ms"], float)
        assert "cand-log" not in line["route"]  # the template, not the path
    assert access[1]["route"] == "/api/v1/sessions/{candidate_id}/answers"
    assert responses[1].status_code == 422
    assert responses[2].headers["X-Request-ID"] == "req-from-proxy.42"  # a sane one is kept
    replaced = responses[3].headers["X-Request-ID"]
    assert replaced != "not a sane id" * 20 and len(replaced) == 32
    assert {"ts", "level", "message"} <= access[0].keys()


def test_redaction_is_a_last_line_of_defence() -> None:
    assert redact("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer ***"
    assert redact("postgresql://app:hunter2@db.example/x") == "postgresql://app:***@db.example/x"
    assert "hunter2" not in redact("host=db password=hunter2 sslmode=require")


async def test_accepted_heartbeats_are_logged_only_at_debug(db_url: str) -> None:
    """Accepted heartbeats are most of the traffic: at the default INFO level they write no
    access line (the metrics count them); a refused heartbeat still does."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    configure_logging(make_settings(log_format="json", log_level="INFO"), stream=buffer)
    try:
        async with serving(db_url) as api:
            token = (await api.start("cand-quiet"))["token"]
            before = await scrape(api)
            for _ in range(3):
                beat = await api.as_candidate("POST", "cand-quiet", "heartbeat", token)
                assert beat.status_code == 200
            after = await scrape(api)
            await api.as_candidate("POST", "cand-quiet", "complete", token)
            refused = await api.as_candidate("POST", "cand-quiet", "heartbeat", token)
            assert refused.status_code == 409
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    beats = [
        line
        for line in lines
        if line["logger"] == "invigilator.access" and line.get("route") == HEARTBEAT_ROUTE
    ]
    assert [line["status"] for line in beats] == [409]
    labels = {"method": "POST", "route": HEARTBEAT_ROUTE, "status": "200"}
    name = "invigilator_http_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 3


async def test_the_api_docs_are_labelled_with_their_own_routes(
    db_url: str, log_output: io.StringIO
) -> None:
    """FastAPI serves these through plain Starlette routes; they are not `<unmatched>`."""
    docs = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
    async with serving(db_url) as api:
        for path in docs:
            assert (await api.client.get(path)).status_code == 200, path
        assert (await api.client.get("/no-such-page")).status_code == 404
        after = await scrape(api)
    for path in docs:
        assert value(
            after, "invigilator_http_requests_total", method="GET", route=path, status="200"
        )
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert value(after, "invigilator_http_requests_total", **unmatched) >= 1
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    routes = [line["route"] for line in lines if line["logger"] == "invigilator.access"]
    assert routes[:5] == [*docs, "<unmatched>"]
