"""One page at a time (issue 14), in real Chromium: two tabs of one browser profile, and two
browser contexts (two devices), offline, slow and online. In each test, every answer a page
called saved or kept on the device is on the server at the end, or the page shows why not.

The four cases of the issue: (1) two tabs offline keep each other's answers; (2) an older
draft from another device never overwrites a newer answer; (3) a conflict is shown, and
"saved" only means saved; (4) only the page that submitted says "Submitted by you". And the
page-claim rules: the newest page takes over, the older one locks and can continue there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from browser.conftest import LiveServer
from browser.test_demo import SET_VISIBILITY, answers
from support.waiting import wait_until

pytestmark = pytest.mark.browser

SECTIONS = ["warm-up", "reasoning", "writing"]


def start_session(server: LiveServer, candidate_id: str, pages: str = "single") -> str:
    response = server.staff(
        "POST",
        "/api/v1/sessions",
        json={
            "candidate_id": candidate_id,
            "create_candidate": True,
            "duration_minutes": 15,
            "sections": SECTIONS,
            "pages": pages,
        },
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def open_test(page: Page, server: LiveServer, candidate_id: str, token: str) -> Page:
    """The candidate's link, as the host application would give it (the demo page)."""
    page.goto(server.url(f"/demo?candidate={candidate_id}#token={token}"))
    expect(page.locator("#test")).to_be_visible()
    expect(page.locator("#q-warm-up-1")).to_be_enabled()
    return page


def stored_entry(page: Page, candidate_id: str, question: str) -> Any:
    return page.evaluate(
        "([id, q]) => JSON.parse(localStorage.getItem(`invigilator:v2:${id}:a:${q}`))",
        [candidate_id, question],
    )


def slow_network(context: BrowserContext, page: Page, latency_ms: int = 800) -> None:
    """Chromium's own throttling (DevTools protocol): every request takes `latency_ms` more."""
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": latency_ms,
            "downloadThroughput": 50 * 1024,
            "uploadThroughput": 50 * 1024,
        },
    )


@pytest.fixture
def device(browser: Browser, live_server: LiveServer) -> Iterator[BrowserContext]:
    """A second device: another browser profile, with another user agent."""
    ctx = browser.new_context(
        viewport={"width": 1280, "height": 860}, user_agent="Mozilla/5.0 (Second device)"
    )
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        ctx.close()


def test_two_tabs_offline_keep_each_others_answers(
    context: BrowserContext, live_server: LiveServer
) -> None:
    """Case 1: both tabs offline, tab B keeps an answer, tab A types another; B is closed and
    the network returns: B's answer is on the server (A sent it), and A's too."""
    token = start_session(live_server, "tabs-1", pages="multiple")
    tab_a = open_test(context.new_page(), live_server, "tabs-1", token)
    tab_b = open_test(context.new_page(), live_server, "tabs-1", token)
    context.set_offline(True)

    tab_b.fill("#q-warm-up-1", "B typed this offline")
    expect(tab_b.locator("#saved")).to_have_text("1 unsaved — kept on this device")
    tab_a.fill("#q-reasoning-1", "10:55")
    expect(tab_a.locator("#saved")).to_have_text("2 unsaved — kept on this device")
    # One entry per question in the shared store: A's edit did not replace B's.
    assert stored_entry(tab_a, "tabs-1", "warm-up-1")["value"] == "B typed this offline"
    assert stored_entry(tab_a, "tabs-1", "reasoning-1")["value"] == "10:55"
    expect(tab_a.locator("#q-warm-up-1")).to_have_value("B typed this offline")  # storage event

    tab_b.close()
    context.set_offline(False)
    wait_until(
        lambda: (
            answers(live_server, "tabs-1")
            == {"warm-up-1": "B typed this offline", "reasoning-1": "10:55"}
        ),
        within=20,
    )
    expect(tab_a.locator("#saved")).to_have_text("All answers saved")
    assert stored_entry(tab_a, "tabs-1", "warm-up-1") is None


def test_a_newer_tab_takes_over_and_the_older_continues_with_everything_kept(
    context: BrowserContext, live_server: LiveServer
) -> None:
    """Policy `single` in one profile: opening tab B locks tab A at once (it says the test is
    open in another window). B keeps an answer offline and is closed; A continues here and
    sends it: nothing a tab kept is dropped by another."""
    token = start_session(live_server, "tabs-2")
    tab_a = open_test(context.new_page(), live_server, "tabs-2", token)
    tab_b = open_test(context.new_page(), live_server, "tabs-2", token)
    expect(tab_a.locator("#elsewhere")).to_be_visible()
    expect(tab_a.locator("#saved")).to_have_text("Open in another window")

    context.set_offline(True)
    tab_b.fill("#q-writing-1", "Kept by B while offline")
    expect(tab_b.locator("#saved")).to_have_text("1 unsaved — kept on this device")
    tab_b.close()
    context.set_offline(False)

    tab_a.click("#continue-here")
    expect(tab_a.locator("#test")).to_be_visible()
    expect(tab_a.locator("#q-writing-1")).to_have_value("Kept by B while offline")
    wait_until(
        lambda: answers(live_server, "tabs-2").get("writing-1") == "Kept by B while offline",
        within=15,
    )
    expect(tab_a.locator("#saved")).to_have_text("All answers saved")
    kinds = live_server.event_types("tabs-2")
    assert kinds.count("page_opened") == 3 and kinds.count("page_superseded") == 2


def test_an_older_draft_from_another_device_never_overwrites_a_newer_answer(
    context: BrowserContext, device: BrowserContext, live_server: LiveServer
) -> None:
    """Case 2: device C types offline and its page closes; device A types a newer answer,
    which is saved; C's page reopens: the server keeps A's answer, and C shows it and says
    why its own draft was not used."""
    token = start_session(live_server, "devices-1")
    page_c = open_test(context.new_page(), live_server, "devices-1", token)
    context.set_offline(True)
    page_c.fill("#q-reasoning-2", "Older, typed on C")
    expect(page_c.locator("#saved")).to_have_text("1 unsaved — kept on this device")
    page_c.close()

    page_a = open_test(device.new_page(), live_server, "devices-1", token)
    page_a.fill("#q-reasoning-2", "Newer, typed on A")
    wait_until(lambda: answers(live_server, "devices-1").get("reasoning-2") == "Newer, typed on A")
    expect(page_a.locator("#saved")).to_have_text("All answers saved")

    context.set_offline(False)
    page_c = open_test(context.new_page(), live_server, "devices-1", token)
    expect(page_c.locator("#q-reasoning-2")).to_have_value("Newer, typed on A")
    expect(page_c.locator("#conflict-note")).to_be_visible()
    expect(page_c.locator("#conflict-note")).to_contain_text("older")
    expect(page_c.locator("#saved")).to_have_text("All answers saved")
    assert stored_entry(page_c, "devices-1", "reasoning-2") is None
    assert answers(live_server, "devices-1")["reasoning-2"] == "Newer, typed on A"
    # A's page says "saved", and that is true: the server holds what A shows.
    expect(page_a.locator("#q-reasoning-2")).to_have_value("Newer, typed on A")


def test_a_conflict_is_shown_and_saved_only_means_saved(
    context: BrowserContext, device: BrowserContext, live_server: LiveServer
) -> None:
    """Case 3, policy `multiple`, one device offline and the other on a slow network: A's
    offline edit is older than B's saved one; when A comes back its save is superseded, and
    A loads B's answer into the field and tells the candidate. Then B changes another answer
    and A, coming back to its tab, shows that too."""
    token = start_session(live_server, "devices-2", pages="multiple")
    page_a = open_test(context.new_page(), live_server, "devices-2", token)
    page_b = open_test(device.new_page(), live_server, "devices-2", token)
    slow_network(device, page_b)

    context.set_offline(True)
    page_a.fill("#q-warm-up-1", "A, offline, earlier")
    expect(page_a.locator("#saved")).to_have_text("1 unsaved — kept on this device")
    page_b.fill("#q-warm-up-1", "B, slow network, later")
    wait_until(
        lambda: answers(live_server, "devices-2").get("warm-up-1") == "B, slow network, later",
        within=15,
    )

    context.set_offline(False)
    expect(page_a.locator("#q-warm-up-1")).to_have_value("B, slow network, later", timeout=15_000)
    expect(page_a.locator("#conflict-note")).to_be_visible()
    expect(page_a.locator("#conflict-note")).to_contain_text("another window or device")
    expect(page_a.locator("#saved")).to_have_text("All answers saved")
    assert answers(live_server, "devices-2")["warm-up-1"] == "B, slow network, later"

    page_b.fill("#q-reasoning-1", "10:55")
    wait_until(lambda: answers(live_server, "devices-2").get("reasoning-1") == "10:55", within=15)
    page_a.evaluate(SET_VISIBILITY, ["hidden", "blur"])
    page_a.evaluate(SET_VISIBILITY, ["visible", "focus"])
    expect(page_a.locator("#q-reasoning-1")).to_have_value("10:55")
    assert answers(live_server, "devices-2") == {
        "warm-up-1": "B, slow network, later",
        "reasoning-1": "10:55",
    }


def test_only_the_page_that_submitted_says_submitted_by_you(
    context: BrowserContext, device: BrowserContext, live_server: LiveServer
) -> None:
    """Case 4: A submits and says "Submitted by you"; B, on another device, learns that the
    test was submitted (at its next write) and does not claim it."""
    token = start_session(live_server, "devices-3", pages="multiple")
    page_a = open_test(context.new_page(), live_server, "devices-3", token)
    page_b = open_test(device.new_page(), live_server, "devices-3", token)
    page_a.fill("#q-warm-up-1", "Final")
    page_a.click("#submit")
    expect(page_a.locator("#result")).to_be_visible()
    expect(page_a.locator("#result-method")).to_have_text("Submitted by you")

    page_b.fill("#q-reasoning-1", "too late")
    expect(page_b.locator("#result")).to_be_visible()
    expect(page_b.locator("#result-method")).to_have_text("Submitted")
    expect(page_b.locator("#result-text")).to_contain_text("another window or device")
    expect(page_b.locator("#result-unsaved")).to_be_visible()  # why "too late" is not saved
    row = live_server.session_row("devices-3")
    assert row is not None and row["status"] == "completed"
    assert dict(row["pending_answers"]) == {"warm-up-1": "Final"}


def test_the_newest_device_takes_over_and_the_older_one_can_continue_there(
    context: BrowserContext, device: BrowserContext, live_server: LiveServer
) -> None:
    """Policy `single` across devices: B's claim supersedes A; A's next save is refused
    (page_superseded), A locks and says its answer is kept on this device; A continues there,
    its answer is saved, and B learns it was taken over from when it comes back."""
    token = start_session(live_server, "devices-4")
    page_a = open_test(context.new_page(), live_server, "devices-4", token)
    page_b = open_test(device.new_page(), live_server, "devices-4", token)

    page_a.fill("#q-writing-1", "A after B opened")
    expect(page_a.locator("#elsewhere")).to_be_visible()
    expect(page_a.locator("#elsewhere-kept")).to_contain_text("1 answer(s) typed here are kept")
    assert "writing-1" not in answers(live_server, "devices-4")
    assert stored_entry(page_a, "devices-4", "writing-1")["value"] == "A after B opened"

    page_a.click("#continue-here")
    wait_until(
        lambda: answers(live_server, "devices-4").get("writing-1") == "A after B opened",
        within=15,
    )
    expect(page_a.locator("#saved")).to_have_text("All answers saved")
    page_b.evaluate(SET_VISIBILITY, ["hidden", "blur"])
    page_b.evaluate(SET_VISIBILITY, ["visible", "focus"])
    expect(page_b.locator("#elsewhere")).to_be_visible()
    assert page_b.evaluate("window.invigilatorDemo.saveAnswer('writing-1', 'B')") is False

    superseded = [d for t, d in timeline(live_server, "devices-4") if t == "page_superseded"]
    assert superseded[0]["user_agent"] != "Mozilla/5.0 (Second device)"  # A, taken over by B
    assert superseded[1]["user_agent"] == "Mozilla/5.0 (Second device)"  # B, by A again
    assert all(d["address"] == "127.0.0.1" for d in superseded)


def timeline(server: LiveServer, candidate_id: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(server.db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT type, detail FROM test_session_event WHERE candidate_id = %s ORDER BY id",
            (candidate_id,),
        ).fetchall()
    return [(t, d) for t, d in rows]
