"""Staff analytics over HTTP: summary, live view and charts, behind the staff key."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any, cast

import pytest

from invigilator import analytics, charts
from invigilator.domain import InvalidInput
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


async def test_a_dashboard_load_computes_the_summary_once_for_its_six_charts(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard reads the summary, then asks for its six charts with the same window:
    they are drawn from that summary (one pass over the sessions, not seven). Charts asked
    for together with no recent summary share one computation, and the summary route itself
    is computed on every call."""
    real = analytics.summary
    computed: list[str] = []

    async def counted(*args: Any, **kwargs: Any) -> analytics.Summary:
        computed.append(kwargs.get("tz", "UTC"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(analytics, "summary", counted)
    today = date.today()
    window = {"since": str(today - timedelta(days=7)), "until": str(today + timedelta(days=2))}

    async def summary() -> dict[str, Any]:
        response = await api.client.get(
            "/api/v1/analytics/summary", params=window, headers=api.staff
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def all_charts(**extra: str) -> None:
        responses = await asyncio.gather(
            *(
                api.client.get(
                    f"/api/v1/analytics/charts/{name}.svg",
                    params={**window, **extra},
                    headers=api.staff,
                )
                for name in charts.NAMES
            )
        )
        for response in responses:
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/svg+xml"

    await api.start("a")
    assert (await summary())["total"] == 1
    await all_charts()
    assert computed == ["UTC"]

    await api.start("b")  # the summary route is never served from memory
    assert (await summary())["total"] == 2
    assert computed == ["UTC", "UTC"]

    await all_charts(tz="Europe/Paris")  # no summary of this window yet: one for the six
    assert computed == ["UTC", "UTC", "Europe/Paris"]

    bad = await api.client.get(
        "/api/v1/analytics/charts/daily_trend.svg",
        params={**window, "tz": "Mars/Olympus"},
        headers=api.staff,
    )
    assert_problem(bad, 422, "validation_error")


async def test_recent_summaries_keep_neither_failures_nor_old_summaries() -> None:
    """A computation that failed is not kept (the next ask computes again), one older than the
    time to live is computed again, and at most `size` windows are kept."""
    calls: list[int] = []

    async def failing() -> analytics.Summary:
        calls.append(0)
        raise InvalidInput("no")

    async def fine() -> analytics.Summary:
        calls.append(1)
        return cast(analytics.Summary, {"total": len(calls)})

    recent = analytics.RecentSummaries(ttl=60, size=2)
    for _ in range(2):
        with pytest.raises(InvalidInput):
            await recent.get("w", failing)
    assert calls == [0, 0]
    assert (await recent.get("w", fine))["total"] == 3
    assert (await recent.get("w", fine))["total"] == 3 and calls == [0, 0, 1]
    await recent.get("x", fine)
    await recent.get("y", fine)  # "w" is the oldest of three: let go
    assert (await recent.get("w", fine))["total"] == 6

    expired = analytics.RecentSummaries(ttl=0)
    await expired.get("w", fine)
    await expired.get("w", fine)
    assert calls[-2:] == [1, 1] and len(calls) == 8


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
