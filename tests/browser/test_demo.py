"""The demo test page and the browser client (`static/invigilator.js`) in real headless Chromium,
against a real server and database. Every claim is checked in the database, not only on the page.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from browser.conftest import HEARTBEAT_SECONDS, LiveServer
from support.waiting import wait_until

pytestmark = pytest.mark.browser

DEMO_SECONDS = 15 * 60

#: Runs before the page's own scripts: the candidate's wall clock is off by SHIFT_MS.
WRONG_CLOCK_SCRIPT = """(() => {
  const shift = SHIFT_MS;
  const RealDate = Date;
  class ShiftedDate extends RealDate {
    constructor(...args) {
      if (args.length) super(...args);
      else super(RealDate.now() + shift);
    }
    static now() {
      return RealDate.now() + shift;
    }
  }
  globalThis.Date = ShiftedDate;
})();"""


#: What the browser does when the candidate switches to another tab ("hidden", "blur") or back.
SET_VISIBILITY = """([state, focusEvent]) => {
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
  document.dispatchEvent(new Event("visibilitychange"));
  window.dispatchEvent(new Event(focusEvent));
}"""


def start_demo(page: Page, server: LiveServer) -> str:
    """Open /demo, press Start, wait until the test runs; return the new candidate_id."""
    page.goto(server.url("/demo"))
    page.click("#start")
    page.wait_for_url("**/demo?candidate=*")
    expect(page.locator("#test")).to_be_visible()
    expect(page.locator("#q-warm-up-1")).to_be_enabled()
    expect(page.locator("#countdown")).not_to_have_attribute("data-remaining", "")
    candidate_id = parse_qs(urlparse(page.url).query)["candidate"][0]
    assert "token" not in page.url, "the token must leave the address bar"
    return candidate_id


def answers(server: LiveServer, candidate_id: str) -> dict[str, Any]:
    row = server.session_row(candidate_id)
    assert row is not None
    return dict(row["pending_answers"])


def seconds_left_in_db(server: LiveServer, candidate_id: str) -> float:
    row = server.session_row(candidate_id)
    assert row is not None
    return float((row["deadline"] - db_now(server)).total_seconds())


def db_now(server: LiveServer) -> datetime:
    with psycopg.connect(server.db_url, autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def page_remaining(page: Page) -> int:
    return int(page.locator("#countdown").get_attribute("data-remaining") or "-1")


def test_answers_and_remaining_time_survive_a_reload(page: Page, live_server: LiveServer) -> None:
    candidate_id = start_demo(page, live_server)
    first = "Because the candidate controls the browser's clock."
    page.fill("#q-warm-up-1", first)
    wait_until(lambda: answers(live_server, candidate_id).get("warm-up-1") == first)
    expect(page.locator("#saved")).to_have_text("All answers saved")

    # A second answer the server never acknowledged before the page went away.
    page.route("**/answers", lambda route: route.abort())
    second = "Each save carries a seq; an older seq never overwrites a newer one."
    page.fill("#q-reasoning-2", second)
    expect(page.locator("#saved")).to_have_text("1 unsaved — kept on this device")
    assert "reasoning-2" not in answers(live_server, candidate_id)

    # Four minutes of the test have passed (on the server's clock) by the time it reloads.
    live_server.execute(
        # invigilator_plus, not `-`: on Citus an UPDATE takes no STABLE operator over a column.
        "UPDATE test_session SET test_start_time = invigilator_plus(test_start_time, "
        "interval '-4 minutes') "
        "WHERE candidate_id = %s",
        (candidate_id,),
    )
    page.reload()
    expect(page.locator("#test")).to_be_visible()
    # The server's answer and this browser's unacknowledged one are both back in the page.
    expect(page.locator("#q-warm-up-1")).to_have_value(first)
    expect(page.locator("#q-reasoning-2")).to_have_value(second)
    # The countdown resumed from the server: 15 minutes less the 4 that passed, not 15 again.
    expect(page.locator("#countdown")).not_to_have_attribute("data-remaining", "")
    remaining = page_remaining(page)
    assert DEMO_SECONDS - 240 - 15 <= remaining <= DEMO_SECONDS - 240, remaining
    assert abs(remaining - seconds_left_in_db(live_server, candidate_id)) <= 2

    # Once saves get through again, the kept answer is committed.
    page.unroute("**/answers")
    wait_until(lambda: answers(live_server, candidate_id).get("reasoning-2") == second)
    expect(page.locator("#saved")).to_have_text("All answers saved")
    row = live_server.session_row(candidate_id)
    assert row is not None and row["status"] == "active"
    assert row["tab_closed_at"] is None, "the reload's heartbeat cancels the tab-close"


def test_answer_typed_offline_is_committed_when_the_network_returns(
    page: Page, live_server: LiveServer, artifacts: Path
) -> None:
    candidate_id = start_demo(page, live_server)
    page.route("**/api/**", lambda route: route.abort())
    text = "Typed while the network was down."
    page.fill("#q-writing-1", text)

    expect(page.locator("#connection")).to_have_attribute("data-online", "false")
    expect(page.locator("#connection")).to_contain_text("Offline")
    stored = page.evaluate(
        "id => localStorage.getItem('invigilator:v2:' + id + ':a:writing-1')", candidate_id
    )
    assert stored is not None and text in stored, "kept on the device until acknowledged"
    assert "writing-1" not in answers(live_server, candidate_id)
    expect(page.locator("#saved")).to_have_text("1 unsaved — kept on this device")
    page.screenshot(path=str(artifacts / "demo-offline.png"))

    page.unroute("**/api/**")
    wait_until(lambda: answers(live_server, candidate_id).get("writing-1") == text, within=15)
    expect(page.locator("#connection")).to_have_attribute("data-online", "true")
    expect(page.locator("#saved")).to_have_text("All answers saved")
    stored = page.evaluate(
        "id => localStorage.getItem('invigilator:v2:' + id + ':a:writing-1')", candidate_id
    )
    assert stored is None, "forgotten locally once committed"


def test_submit_shows_the_outcome_and_completes_the_session(
    page: Page, live_server: LiveServer
) -> None:
    candidate_id = start_demo(page, live_server)
    page.fill("#q-warm-up-1", "So the candidate cannot stop it.")
    page.click('[data-complete="warm-up"]')
    expect(page.locator('[data-badge="warm-up"]')).to_be_visible()
    page.fill("#q-reasoning-1", "10:55")  # submitted before the debounce: submit saves first

    page.click("#submit")
    result = page.locator("#result")
    expect(result).to_be_visible()
    expect(result).to_have_attribute("data-method", "manual")
    expect(page.locator("#result-title")).to_have_text("Test submitted")
    expect(page.locator('#result-answers [data-question="reasoning-1"] dd')).to_have_text("10:55")

    row = live_server.session_row(candidate_id)
    assert row is not None
    assert (row["status"], row["completion_method"]) == ("completed", "manual")
    assert row["completed_at"] is not None
    assert row["pending_answers"] == {
        "warm-up-1": "So the candidate cannot stop it.",
        "reasoning-1": "10:55",
    }
    assert row["sections_completed"] == ["warm-up"]

    # A reload after the end shows the stored outcome again.
    page.reload()
    expect(page.locator("#result")).to_have_attribute("data-method", "manual")


def test_closing_the_tab_sends_the_tab_close_beacon(page: Page, live_server: LiveServer) -> None:
    candidate_id = start_demo(page, live_server)
    # The client listens for the page going away once its claim is answered (it is running);
    # on a busy machine the page can show the test a moment before that.
    # (Polled from here: the page's CSP forbids wait_for_function's string evaluation.)
    wait_until(lambda: page.evaluate("() => Boolean(window.invigilatorDemo?._running)"))
    page.close()
    wait_until(lambda: (live_server.session_row(candidate_id) or {}).get("tab_closed_at"))
    assert "tab_closed" in live_server.event_types(candidate_id)
    row = live_server.session_row(candidate_id)
    assert row is not None and row["status"] == "active", "ended only after the tab-close grace"


def test_switching_away_and_back_is_recorded_and_keeps_the_session(
    page: Page, live_server: LiveServer
) -> None:
    candidate_id = start_demo(page, live_server)
    # The candidate switches to another tab...
    page.evaluate(SET_VISIBILITY, ["hidden", "blur"])
    # ...: the events are recorded, and the beacon announces a possible tab close.
    wait_until(
        lambda: (
            {"tab_hidden", "focus_lost", "tab_closed"} <= set(live_server.event_types(candidate_id))
        )
    )
    page.evaluate(SET_VISIBILITY, ["visible", "focus"])
    # ...and comes back: the heartbeat sent at once cancels the tab close ("resumed").
    wait_until(lambda: (live_server.session_row(candidate_id) or {}).get("tab_closed_at") is None)
    wait_until(
        lambda: (
            {"tab_visible", "focus_regained", "resumed"}
            <= set(live_server.event_types(candidate_id))
        )
    )
    row = live_server.session_row(candidate_id)
    assert row is not None and row["status"] == "active"


@pytest.mark.parametrize("shift_hours", [3, -26], ids=["clock-3h-fast", "clock-26h-slow"])
def test_countdown_ignores_a_wrong_client_clock(
    page: Page, live_server: LiveServer, shift_hours: int
) -> None:
    shift_ms = shift_hours * 3600 * 1000
    page.add_init_script(WRONG_CLOCK_SCRIPT.replace("SHIFT_MS", str(shift_ms)))
    candidate_id = start_demo(page, live_server)
    skew = page.evaluate("Date.now()") - time.time() * 1000
    assert abs(skew - shift_ms) < 60_000, "the page's clock really is wrong"

    remaining = page_remaining(page)
    assert abs(remaining - seconds_left_in_db(live_server, candidate_id)) <= 2, remaining
    assert DEMO_SECONDS - 10 <= remaining <= DEMO_SECONDS
    # And it keeps counting down in real seconds.
    page.wait_for_function(
        "start => Number(document.querySelector('#countdown').dataset.remaining) <= start - 1",
        arg=remaining,
        timeout=3000,
    )


def test_time_running_out_ends_the_test(page: Page, live_server: LiveServer) -> None:
    candidate_id = start_demo(page, live_server)
    page.fill("#q-warm-up-1", "Written just in time.")
    wait_until(lambda: answers(live_server, candidate_id).get("warm-up-1"))
    # Move the deadline to 3 s from now; the page learns it from its next heartbeat.
    live_server.execute(
        "UPDATE test_session SET test_start_time = now() - interval '15 minutes' "
        "+ interval '3 seconds' WHERE candidate_id = %s",
        (candidate_id,),
    )
    result = page.locator("#result")
    expect(result).to_be_visible(timeout=12_000)
    expect(result).to_have_attribute("data-method", "timer_expired")
    expect(page.locator("#result-title")).to_have_text("Time is up")
    row = live_server.session_row(candidate_id)
    assert row is not None
    assert (row["status"], row["completion_method"]) == ("completed", "timer_expired")
    assert row["pending_answers"] == {"warm-up-1": "Written just in time."}


def test_staff_ending_the_session_stops_the_page(page: Page, live_server: LiveServer) -> None:
    candidate_id = start_demo(page, live_server)
    page.fill("#q-warm-up-1", "Kept.")
    wait_until(lambda: answers(live_server, candidate_id).get("warm-up-1") == "Kept.")
    response = live_server.staff(
        "POST",
        f"/api/v1/sessions/{candidate_id}/end",
        json={"outcome": "terminate", "reason": "browser test"},
    )
    assert response.status_code == 200, response.text
    # The next heartbeat gets 409 session_ended: the client stops and reports the outcome.
    result = page.locator("#result")
    expect(result).to_be_visible()
    expect(result).to_have_attribute("data-method", "admin_terminated")
    expect(page.locator("#result-title")).to_have_text("Ended by staff")
    expect(page.locator('#result-answers [data-question="warm-up-1"] dd')).to_have_text("Kept.")
    assert page.evaluate("window.invigilatorDemo.saveAnswer('warm-up-1', 'late')") is False


def test_a_pause_locks_the_page_and_the_resume_shows_the_time_that_was_left(
    page: Page, live_server: LiveServer
) -> None:
    candidate_id = start_demo(page, live_server)
    page.fill("#q-warm-up-1", "Typed before the pause.")
    response = live_server.staff(
        "POST", f"/api/v1/sessions/{candidate_id}/pause", json={"reason": "browser test"}
    )
    assert response.status_code == 200, response.text
    # Within one heartbeat the page locks, and the clock stands still.
    expect(page.locator("#paused")).to_be_visible(timeout=(HEARTBEAT_SECONDS + 3) * 1000)
    expect(page.locator("#q-warm-up-1")).to_be_disabled()
    expect(page.locator("#submit")).to_be_disabled()
    expect(page.locator("#test")).to_have_attribute("data-paused", "true")
    # What was typed before the pause is still saved.
    wait_until(lambda: answers(live_server, candidate_id).get("warm-up-1"), "the typed answer")
    frozen = page_remaining(page)
    # The pause has lasted ten minutes (moved in the database, not waited for): the clock
    # still shows what was left, through heartbeats.
    live_server.execute(
        "UPDATE test_session SET paused_at = invigilator_plus(paused_at, interval '-10 minutes'), "
        "test_start_time = invigilator_plus(test_start_time, interval '-10 minutes') "
        "WHERE candidate_id = %s",
        (candidate_id,),
    )
    moved = db_now(live_server)

    def beat_since_move() -> bool:
        row = live_server.session_row(candidate_id)
        return bool(row and row["last_heartbeat"] and row["last_heartbeat"] > moved)

    wait_until(beat_since_move, "a heartbeat after the move", within=3 * HEARTBEAT_SECONDS + 5)
    assert abs(page_remaining(page) - frozen) <= 1, (frozen, page_remaining(page))
    assert page.evaluate("window.invigilatorDemo.paused") is True

    response = live_server.staff(
        "POST", f"/api/v1/sessions/{candidate_id}/resume", json={"reason": "browser test"}
    )
    assert response.status_code == 200, response.text
    expect(page.locator("#paused")).to_be_hidden(timeout=(HEARTBEAT_SECONDS + 3) * 1000)
    expect(page.locator("#q-warm-up-1")).to_be_enabled()
    expect(page.locator("#submit")).to_be_enabled()
    # The time left is what was left at the pause (the deadline moved by the paused time),
    # and the countdown runs again.
    remaining = page_remaining(page)
    assert abs(remaining - seconds_left_in_db(live_server, candidate_id)) <= 2, remaining
    assert frozen - 6 <= remaining <= frozen + 1, (frozen, remaining)
    page.wait_for_function(
        "start => Number(document.querySelector('#countdown').dataset.remaining) <= start - 1",
        arg=remaining,
        timeout=3000,
    )
    page.fill("#q-warm-up-1", "Typed after the pause.")
    wait_until(
        lambda: answers(live_server, candidate_id).get("warm-up-1") == "Typed after the pause."
    )
    assert [t for t in live_server.event_types(candidate_id) if "pause" in t] == [
        "paused",
        "pause_ended",
    ]


def test_demo_page_looks_right(page: Page, live_server: LiveServer, artifacts: Path) -> None:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))

    response = page.goto(live_server.url("/demo"))
    assert response is not None and response.ok
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    expect(page.locator("#intro")).to_be_visible()
    page.screenshot(path=str(artifacts / "demo-start.png"), full_page=True)

    start_demo(page, live_server)
    page.fill("#q-warm-up-1", "A candidate can change their own clock; the server's they cannot.")
    page.click('[data-complete="warm-up"]')
    page.fill("#q-reasoning-1", "10:55")
    page.fill(
        "#q-reasoning-2",
        "Each save carries an increasing seq; the server keeps, per question, the value of the "
        "highest seq it has seen.",
    )
    expect(page.locator("#saved")).to_have_text("All answers saved")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "demo.png"), full_page=True)

    page.click("#submit")
    expect(page.locator("#result")).to_be_visible()
    page.screenshot(path=str(artifacts / "demo-result.png"), full_page=True)
    assert problems == [], problems
