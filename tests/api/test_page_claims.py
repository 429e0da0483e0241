"""Page claims (issue 14): every page that opens a session claims it; with the page policy
`single` the newest page takes over and an older page's writes are refused with 409
`page_superseded` (changing nothing); with `multiple` pages coexist. And the edit-time rule:
`seq` is when an edit was made, so an older draft never beats a newer committed answer,
whatever order they arrive in, and the save that lost says what the server holds."""

from __future__ import annotations

from typing import Any

import psycopg

from support.api import Api, assert_problem


async def claim(api: Api, token: str, page: str, *, ua: str = "Browser A") -> dict[str, Any]:
    response = await api.client.post(
        "/api/v1/sessions/alice/pages",
        json={"page_id": page},
        headers={**api.bearer(token), "User-Agent": ua},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def save(api: Api, token: str, answers: dict[str, Any], seq: int, page: str | None) -> Any:
    body: dict[str, Any] = {"answers": answers, "seq": seq}
    if page is not None:
        body["page_id"] = page
    return await api.as_candidate("PATCH", "alice", "answers", token, json=body)


def events(db: psycopg.Connection[Any], *types: str) -> list[tuple[str, dict[str, Any]]]:
    rows = db.execute(
        "SELECT type, detail FROM test_session_event WHERE candidate_id = 'alice' ORDER BY id"
    ).fetchall()
    return [(t, d) for t, d in rows if t in types]


async def test_the_newest_page_takes_over_and_an_older_page_is_refused(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice"))["token"]
    first = await claim(api, token, "page-a", ua="Laptop")
    assert first["pages"] == "single" and first["page_id"] == "page-a"
    assert first["superseded_pages"] == 0
    assert (await save(api, token, {"q1": "from a"}, 10, "page-a")).status_code == 200

    second = await claim(api, token, "page-b", ua="Phone")
    assert second["superseded_pages"] == 1
    assert second["pending_answers"] == {"q1": "from a"} and second["answer_seq"] == {"q1": 10}

    # Every write from the older page is refused with one stable code, and changes nothing.
    refused = await save(api, token, {"q1": "late from a", "q2": "x"}, 20, "page-a")
    assert_problem(refused, 409, "page_superseded")
    for path, body in [
        ("sections", {"section": "s1", "page_id": "page-a"}),
        ("events", {"type": "focus_lost", "page_id": "page-a"}),
        ("complete?page_id=page-a", None),
    ]:
        response = await api.as_candidate("POST", "alice", path, token, json=body)
        assert_problem(response, 409, "page_superseded")
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert state["status"] == "active" and state["pending_answers"] == {"q1": "from a"}
    assert state["sections_completed"] == [] and state["page_id"] == "page-b"

    # The newest page writes; the older one continues by claiming again ("continue here").
    assert (await save(api, token, {"q2": "from b"}, 30, "page-b")).status_code == 200
    again = await claim(api, token, "page-a", ua="Laptop")
    assert again["pending_answers"] == {"q1": "from a", "q2": "from b"}
    assert_problem(await save(api, token, {"q3": "b"}, 40, "page-b"), 409, "page_superseded")
    assert (await save(api, token, {"q3": "a"}, 40, "page-a")).status_code == 200

    # A caller that names no page (a script on the API) is not a page: the rule leaves it be.
    assert (await save(api, token, {"q4": "script"}, 50, None)).status_code == 200

    opened = events(db, "page_opened")
    assert [d["page_id"] for _, d in opened] == ["page-a", "page-b", "page-a"]
    assert opened[1][1]["user_agent"] == "Phone" and opened[1][1]["address"] == "127.0.0.1"
    superseded = events(db, "page_superseded")
    assert [(d["page_id"], d["by_page_id"]) for _, d in superseded] == [
        ("page-a", "page-b"),
        ("page-b", "page-a"),
    ]
    assert superseded[0][1]["user_agent"] == "Laptop"
    pages = db.execute(
        "SELECT page_id, user_agent, client_address, first_seen <= last_seen,"
        " superseded_at IS NOT NULL FROM test_session_page ORDER BY page_id"
    ).fetchall()
    assert pages == [
        ("page-a", "Laptop", "127.0.0.1", True, False),
        ("page-b", "Phone", "127.0.0.1", True, True),
    ]


async def test_a_pages_saves_keep_its_last_seen_to_the_minute(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    """last_seen is the claim and then the page's saves, to the minute: a save rewrites the
    claim's row only when last_seen is a minute old (a coding test saves every few seconds)."""
    token = (await api.start("alice"))["token"]
    await claim(api, token, "page-a")

    def seen() -> tuple[Any, bool]:
        row = db.execute(
            "SELECT last_seen, last_seen > now() - interval '5 seconds' FROM test_session_page"
            " WHERE candidate_id = 'alice' AND page_id = 'page-a'"
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    db.execute(
        "UPDATE test_session_page SET last_seen = now() - interval '50 seconds'"
        " WHERE candidate_id = 'alice'"
    )
    before, _ = seen()
    assert (await save(api, token, {"q1": "a"}, 10, "page-a")).status_code == 200
    assert seen() == (before, False)  # under a minute old: left as it was

    db.execute(
        "UPDATE test_session_page SET last_seen = now() - interval '61 seconds'"
        " WHERE candidate_id = 'alice'"
    )
    assert (await save(api, token, {"q1": "b"}, 11, "page-a")).status_code == 200
    assert seen()[1] is True  # a minute old: moved to this save


async def test_with_multiple_pages_they_coexist_and_see_each_others_answers(api: Api) -> None:
    token = (await api.start("alice", pages="multiple"))["token"]
    assert (await claim(api, token, "page-a"))["pages"] == "multiple"
    assert (await claim(api, token, "page-b"))["superseded_pages"] == 0
    assert (await save(api, token, {"q1": "a"}, 10, "page-a")).status_code == 200
    assert (await save(api, token, {"q2": "b"}, 11, "page-b")).status_code == 200
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert state["pending_answers"] == {"q1": "a", "q2": "b"}
    assert state["answer_seq"] == {"q1": 10, "q2": 11}
    done = await api.as_candidate("POST", "alice", "complete?page_id=page-a", token)
    assert done.status_code == 200 and done.json()["page_id"] == "page-a"
    # The other page asks again: it learns the test was submitted, by page-a, not by itself.
    again = await api.as_candidate("POST", "alice", "complete?page_id=page-b", token)
    assert again.json()["already_ended"] is True and again.json()["page_id"] == "page-a"


async def test_the_default_page_policy_comes_from_the_settings(api_with: Any) -> None:
    async with api_with(pages="multiple") as api:
        assert (await api.start("alice"))["pages"] == "multiple"
        assert (await api.start("bob", pages="single"))["pages"] == "single"


async def test_a_claim_on_an_ended_session_or_a_bad_page_id_is_refused(api: Api) -> None:
    token = (await api.start("alice"))["token"]
    bad = await api.as_candidate("POST", "alice", "pages", token, json={"page_id": "no spaces"})
    assert_problem(bad, 422, "validation_error")
    long = await api.as_candidate("POST", "alice", "pages", token, json={"page_id": "p" * 65})
    assert_problem(long, 422, "validation_error")
    await api.as_candidate("POST", "alice", "complete", token)
    ended = await api.as_candidate("POST", "alice", "pages", token, json={"page_id": "page-a"})
    assert_problem(ended, 409, "session_ended")


async def test_an_older_pages_tab_close_beacon_changes_nothing(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice"))["token"]
    await claim(api, token, "page-a")
    await claim(api, token, "page-b")
    old = await api.client.post(
        "/api/v1/sessions/alice/tab-close",
        content=f'{{"token": "{token}", "page_id": "page-a"}}',
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert old.status_code == 204
    assert db.execute("SELECT tab_closed_at FROM test_session").fetchone() == (None,)
    new = await api.client.post(
        "/api/v1/sessions/alice/tab-close",
        content=f'{{"token": "{token}", "page_id": "page-b"}}',
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert new.status_code == 204
    row = db.execute("SELECT tab_closed_at IS NOT NULL FROM test_session").fetchone()
    assert row == (True,)


async def test_an_older_draft_never_beats_a_newer_committed_answer(api: Api) -> None:
    """Issue 14, case 2: device C typed at T1 while offline; device A typed at T2 > T1 and it
    was saved; C's draft arrives afterwards with its own edit time and loses, and C is told
    the newer answer. Sent the other way round, the newer one wins just the same."""
    token = (await api.start("alice", pages="multiple"))["token"]
    t1, t2 = 1_800_000_000_000, 1_800_000_005_000  # edit times, server clock, epoch ms
    assert (await save(api, token, {"q1": "newer from A"}, t2, "page-a")).status_code == 200
    late = await save(api, token, {"q1": "older from C", "q2": "only C"}, t1, "page-c")
    assert late.status_code == 200
    body = late.json()
    assert body["applied"] == ["q2"] and body["superseded"] == ["q1"]
    assert body["current"] == {"q1": "newer from A"} and body["current_seq"] == {"q1": t2}
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert state["pending_answers"] == {"q1": "newer from A", "q2": "only C"}

    # The other order: the older draft first, then the newer edit: the newer wins again.
    assert (await save(api, token, {"q3": "older"}, t1, "page-c")).status_code == 200
    newer = await save(api, token, {"q3": "newer"}, t2, "page-a")
    assert newer.json()["applied"] == ["q3"] and newer.json()["current"] == {}
    state = (await api.as_candidate("GET", "alice", "state", token)).json()
    assert state["pending_answers"]["q3"] == "newer" and state["answer_seq"]["q3"] == t2


async def test_sessions_opened_from_several_devices_are_marked_live_and_counted(
    api_with: Any,
) -> None:
    async with api_with(client_ip="203.0.113.7") as api:
        token = (await api.start("alice"))["token"]
        bob = (await api.start("bob"))["token"]
        await claim(api, token, "page-a", ua="Laptop")
        await claim(api, token, "page-b", ua="Phone")
        await api.client.post(
            "/api/v1/sessions/bob/pages", json={"page_id": "one"}, headers=api.bearer(bob)
        )
        live = (await api.client.get("/api/v1/live", headers=api.staff)).json()
        marks = {s["candidate_id"]: (s["multiple_devices"], s["devices"]) for s in live["sessions"]}
        assert marks == {"alice": (True, 2), "bob": (False, 1)}
        summary = await api.client.get(
            "/api/v1/analytics/summary", params={"since": "2020-01-01"}, headers=api.staff
        )
        assert summary.json()["multiple_devices"] == {
            "sessions": 1,
            "share": 0.5,
            "devices": 1,
            "addresses": 0,
        }


async def test_the_page_policy_is_part_of_the_sessions_policy(api: Api) -> None:
    """`pages` may be given with the rest of the policy, and is shown and logged with it."""
    started = await api.start("alice", policy={"pages": "multiple", "tab_close": "ignore"})
    assert started["policy"]["pages"] == "multiple" and started["pages"] == "multiple"
    timeline = (await api.client.get("/api/v1/sessions/alice/events", headers=api.staff)).json()
    assert timeline["events"][0]["detail"]["policy"]["pages"] == "multiple"
    clash = await api.client.post(
        "/api/v1/sessions",
        json={"candidate_id": "bob", "pages": "single", "policy": {"pages": "multiple"}},
        headers=api.staff,
    )
    assert clash.status_code == 422, clash.text
    assert clash.headers["content-type"].startswith("application/problem+json")
    assert (await api.client.get("/api/v1/sessions/bob", headers=api.staff)).status_code == 404
