"""The staff dashboard (/admin) in real headless Chromium against a real server and database:
sign in, the live table follows heartbeats, charts render, a timeline opens, sign out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from browser.conftest import STAFF_KEY, LiveServer, browser_settings, serving

pytestmark = pytest.mark.browser


@pytest.fixture
def live_server(db_url: str) -> Iterator[LiveServer]:
    """The dashboard at the production heartbeat interval (15 s; silent after 30 s), so a
    candidate who just beat stays "live" for the whole test."""
    settings = browser_settings().model_copy(update={"heartbeat_interval_seconds": 15.0})
    with serving(db_url, settings) as server:
        yield server


def start_session(server: LiveServer, candidate_id: str) -> str:
    response = server.staff(
        "POST",
        "/api/v1/sessions",
        json={"candidate_id": candidate_id, "create_candidate": True, "sections": ["a", "b"]},
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def beat(server: LiveServer, candidate_id: str, token: str) -> None:
    response = httpx.post(
        server.url(f"/api/v1/sessions/{candidate_id}/heartbeat"),
        headers={"Authorization": f"Bearer {token}"},
        json={"active": True},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def sign_in(page: Page, server: LiveServer, key: str = STAFF_KEY) -> None:
    page.goto(server.url("/admin"))
    expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    page.fill("#key", key)
    page.get_by_role("button", name="Sign in").click()


def test_a_wrong_key_is_refused(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server, "not-the-key")
    expect(page.get_by_role("alert")).to_have_text("That key is not valid.")
    assert live_server.staff("GET", "/api/v1/sessions").status_code == 200  # server is fine
    cookies = page.context.cookies()
    assert not [c for c in cookies if c["name"] == "invigilator_staff"]


def test_dashboard_signs_in_follows_heartbeats_and_signs_out(
    page: Page, live_server: LiveServer, artifacts: Path
) -> None:
    quiet_token = start_session(live_server, "cand-quiet")
    start_session(live_server, "cand-silent")
    beat(live_server, "cand-quiet", quiet_token)
    live_server.execute(
        "UPDATE test_session SET last_heartbeat = now() - interval '2 minutes' "
        "WHERE candidate_id = 'cand-silent'"
    )

    sign_in(page, live_server)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "invigilator_staff"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert STAFF_KEY not in cookie["value"]  # a signed stand-in, never the key itself

    expect(page.locator("#kpi-active")).to_have_text("2")
    silent_row = page.locator("tr[data-candidate='cand-silent']")
    expect(silent_row.locator(".tag")).to_have_text("silent")
    expect(page.locator("#kpi-silent")).to_have_text("1 silent")

    # The silent candidate comes back: the table updates by itself (polling), no reload.
    silent_token = live_server.staff(
        "POST", "/api/v1/sessions", json={"candidate_id": "cand-silent"}
    ).json()["token"]
    beat(live_server, "cand-silent", silent_token)
    expect(silent_row.locator(".tag")).to_have_text("live", timeout=15_000)
    expect(page.locator("#kpi-silent")).to_have_text("none silent")

    # Charts are real SVG images drawn by the server.
    chart = page.locator("img[data-chart='completion_by_method']")
    expect(chart).to_have_attribute("src", re.compile(r"^/api/v1/analytics/charts/.*\.svg\?"))
    # Polled from here: wait_for_function's in-page polling evaluates a string, which the
    # dashboard's Content-Security-Policy forbids once the image is not loaded at once.
    for _ in range(150):
        if chart.evaluate("img => img.complete && img.naturalWidth > 0"):
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("the completion chart never loaded")
    assert page.locator("img[data-chart]").count() == 6

    # A row opens the session's timeline.
    page.locator("tr[data-candidate='cand-quiet']").click()
    expect(page.locator("#timeline-title")).to_have_text("Timeline · cand-quiet")
    expect(page.locator("#timeline li").first).to_contain_text("started")
    page.screenshot(path=str(artifacts / "admin.png"))

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "invigilator_staff"]
    status = page.evaluate("fetch('/api/v1/live').then(r => r.status)")
    assert status == 401


def test_dashboard_cookie_cannot_authorise_a_cross_site_change(
    page: Page, live_server: LiveServer
) -> None:
    start_session(live_server, "cand-x")
    sign_in(page, live_server)
    expect(page.locator("#kpi-active")).to_have_text("1")
    cookie = next(c for c in page.context.cookies() if c["name"] == "invigilator_staff")
    response = httpx.post(
        live_server.url("/api/v1/sessions/cand-x/end"),
        json={"outcome": "terminate"},
        headers={
            "Cookie": f"invigilator_staff={cookie['value']}",
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
        },
        timeout=10,
    )
    assert response.status_code == 403
    assert live_server.session_row("cand-x")["status"] == "active"  # type: ignore[index]
