"""`invigilator session show`, run as a user runs it: a subprocess of `python -m invigilator`
against the test database."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from invigilator.store import SessionStore
from support.cli import run_cli
from support.db import add_candidate, shift_session

minutes = lambda n: timedelta(minutes=n)  # noqa: E731


async def _a_session_with_a_history(store: SessionStore, db: psycopg.Connection[Any]) -> str:
    cid = add_candidate(db, "cand:bold+7")  # ids hold no markup now (validation.NAME_CHARACTERS)
    await store.start(cid, duration_minutes=45, planned_sections=["reading", "maths"])
    await store.heartbeat(cid)
    await store.save_answers(cid, {"q1": "SECRET-ANSWER-ONE", "q2": {"x": "SECRET-TWO"}}, seq=1)
    await store.complete_section(cid, "reading")
    await store.extend(cid, 10, actor="staff:ops", reason="fire alarm")
    # An adopted row keeps the original, answers and all: they must not be shown either.
    db.execute(
        "INSERT INTO test_session_event (candidate_id, type, actor, detail) "
        "VALUES (%s, 'adopted', 'migration', %s)",
        (cid, json.dumps({"original": {"pending_answers": {"q0": "SECRET-OLD"}}})),
    )
    return cid


async def test_session_show_prints_the_session_and_its_timeline_without_answers(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = await _a_session_with_a_history(store, db)

    result = run_cli("session", "show", cid, db_url=db_url)

    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "SECRET" not in text
    assert f"test session {cid}" in text and f"timeline {cid}" in text
    for expected in (
        "active",
        "45 min (+10 extended)",
        "reading (planned: reading, maths)",
        "2: q1, q2",  # the questions answered, never the answers
        "started",
        "answers_saved",
        "section_completed",
        "time_extended",
        "fire alarm",
        "staff:ops",
        "adopted",
        '"answer_keys": ["q0"]',
    ):
        assert expected in text, expected


async def test_session_show_json_sees_a_due_session_as_ended(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = await _a_session_with_a_history(store, db)
    shift_session(db, cid, test_start_time=minutes(56), last_heartbeat=minutes(1))  # 45 + 10

    result = run_cli("session", "show", cid, "--json", db_url=db_url)

    assert result.returncode == 0, result.stderr
    assert "SECRET" not in result.stdout
    shown = json.loads(result.stdout)
    session = await store.get(cid)
    assert shown["status"] == "completed" and shown["completion_method"] == "timer_expired"
    assert datetime.fromisoformat(shown["completed_at"]) == session.deadline
    assert shown["remaining_seconds"] == 0
    assert shown["answer_keys"] == ["q1", "q2"] and "pending_answers" not in shown
    assert shown["sections_completed"] == ["reading"]
    assert shown["planned_sections"] == ["reading", "maths"]
    assert (shown["test_duration_minutes"], shown["extra_minutes"]) == (45, 10)
    types = [e["type"] for e in shown["events"]]
    assert types == [
        "started",
        "answers_saved",
        "section_completed",
        "time_extended",
        "adopted",
        "completed",
    ]
    assert shown["events"][1]["detail"] == {"questions": ["q1", "q2"], "seq": 1}
    assert shown["events"][4]["detail"] == {"original": {"answer_keys": ["q0"]}}
    assert shown["events"][-1]["detail"]["method"] == "timer_expired"


def test_session_show_for_an_unknown_candidate_exits_1(db_url: str) -> None:
    result = run_cli("session", "show", "nobody", "--json", db_url=db_url)
    assert result.returncode == 1
    assert result.stdout == ""  # nothing a script could mistake for a session
    assert "error: no test session for candidate 'nobody'" in result.stderr


async def test_session_show_fits_80_columns_and_cuts_no_time(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = await _a_session_with_a_history(store, db)
    result = await asyncio.to_thread(
        run_cli, "session", "show", cid, db_url=db_url, env={"COLUMNS": "80"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    times = [m for line in lines for m in stamp.findall(line)]
    events = await store.events(cid)
    # every event's time, whole, on one line (and the session's own times)
    assert len(times) >= len(events) + 4, result.stdout
    for event in events:
        assert event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") in times


async def test_session_pause_resume_reopen_and_extend_from_the_command_line(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db, "cli-proctor")
    await store.start(cid, duration_minutes=30)

    paused = run_cli("session", "pause", cid, "--reason", "fire alarm", "--json", db_url=db_url)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    again = run_cli("session", "pause", cid, db_url=db_url)
    assert again.returncode == 1 and "paused" in again.stderr
    resumed = run_cli("session", "resume", cid, "--reason", "all clear", db_url=db_url)
    assert resumed.returncode == 0, resumed.stderr
    assert "paused" in resumed.stdout  # the session table, now with the time it stood still
    extended = run_cli("session", "extend", cid, "--minutes", "5", "--json", db_url=db_url)
    assert extended.returncode == 0, extended.stderr
    assert json.loads(extended.stdout)["extra_minutes"] == 5
    early = run_cli("session", "reopen", cid, "--minutes", "5", db_url=db_url)
    assert early.returncode == 1 and "still running" in early.stderr
    await store.complete(cid)
    reopened = run_cli(
        "session", "reopen", cid, "--minutes", "7", "--reason", "crash", "--json", db_url=db_url
    )
    assert reopened.returncode == 0, reopened.stderr
    body = json.loads(reopened.stdout)
    assert body["status"] == "active" and body["awaiting_candidate"] is True
    assert body["remaining_seconds"] == 7 * 60
    events = [
        (e.type, e.actor, e.detail.get("reason"))
        for e in await store.events(cid)
        if e.type in ("paused", "pause_ended", "time_extended", "reopened")
    ]
    assert events == [
        ("paused", "cli", "fire alarm"),
        ("pause_ended", "cli", "all clear"),
        ("time_extended", "cli", None),
        ("reopened", "cli", "crash"),
    ]
    missing = run_cli("session", "pause", "nobody", db_url=db_url)
    assert missing.returncode == 1 and "no test session" in missing.stderr


async def test_session_incident_records_one_as_the_cli(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db, "cand-incident")
    await store.start(cid)

    result = run_cli(
        "session", "incident", cid, "--severity", "high", "--reason-code", "phone",
        "--note", "a phone on the desk", "--json", db_url=db_url,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    incident = json.loads(result.stdout)
    assert incident["severity"] == "high" and incident["actor"] == "cli"
    row = db.execute(
        "SELECT actor, detail FROM test_session_event WHERE type = 'incident'"
    ).fetchone()
    assert row is not None and row[0] == "cli" and row[1]["note"] == "a phone on the desk"

    refused = run_cli(
        "session", "incident", cid, "--severity", "high", "--reason-code", "no spaces",
        db_url=db_url,
    )  # fmt: skip
    assert refused.returncode == 1 and "reason_code" in refused.stderr
    missing = run_cli(
        "session", "incident", "nobody", "--severity", "low", "--reason-code", "x", db_url=db_url
    )
    assert missing.returncode == 1 and "no test session" in missing.stderr
