"""Staff analytics over HTTP: summary, live view and charts, behind the staff key."""

from __future__ import annotations

from typing import Any

import pytest

from invigilator import analytics
from invigilator.store import SessionStore
from support.api import Api, assert_problem


async def test_summary_has_the_documented_keys_and_matches_the_module(
    api: Api, store: SessionStore
) -> None:
    token = (await api.start("a"))["token"]
    await api.start("b")
    await api.as_candidate("POST", "a", "complete", token)
    response = await api.client.get(
        "/api/v1/analytics/summary", params={"since": "2020-01-01"}, headers=api.staff
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    for key in ("total", "active", "completed", "abandoned", "completion_rate"):
        assert key in body
    assert set(body["duration_seconds"]) >= {"mean", "median", "p90"}
    assert set(body["abandonment"]) >= {
        "by_sections_completed",
        "by_minute",
        "by_hour",
        "by_reason",
    }
    assert (body["total"], body["active"], body["completed"], body["completion_rate"]) == (
        2,
        1,
        1,
        1.0,
    )
    direct = await analytics.summary(
        store.pool, analytics.parse_bound("2020-01-01"), None, store.policy
    )
    for key in ("total", "active", "completed", "abandoned", "by_method", "abandonment"):
        assert body[key] == direct[key]


async def test_live_lists_running_sessions_with_their_clock(api: Api) -> None:
    token = (await api.start("a"))["token"]
    await api.as_candidate("POST", "a", "heartbeat", token)
    response = await api.client.get("/api/v1/live", headers=api.staff)
    assert response.status_code == 200
    live = response.json()
    assert live["count"] == 1
    (session,) = live["sessions"]
    assert session["candidate_id"] == "a" and session["silent"] is False
    assert 0 < session["remaining_seconds"] <= 3600


async def test_charts_are_svg_and_unknown_charts_are_422(api: Api) -> None:
    await api.start("a")
    response = await api.client.get(
        "/api/v1/analytics/charts/completion_by_method.svg", headers=api.staff
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.content.lstrip().startswith(b"<?xml")
    missing = await api.client.get("/api/v1/analytics/charts/pie.svg", headers=api.staff)
    assert_problem(missing, 422, "validation_error")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/analytics/summary",
        "/api/v1/live",
        "/api/v1/analytics/charts/daily_trend.svg",
    ],
)
async def test_analytics_need_a_staff_key(api: Api, path: str) -> None:
    token = (await api.start("a"))["token"]
    assert_problem(await api.client.get(path), 401, "unauthorized")
    assert_problem(await api.client.get(path, headers=api.bearer(token)), 401, "unauthorized")


async def test_bad_windows_are_422(api: Api) -> None:
    for params in (
        {"since": "2026-02-01", "until": "2026-01-01"},
        {"since": "yesterday"},
        {"tz": "Mars/Olympus"},
    ):
        response = await api.client.get(
            "/api/v1/analytics/summary", params=params, headers=api.staff
        )
        assert_problem(response, 422, "validation_error")
