"""`invigilator sweep` and `invigilator session show`, run as a user runs them: a subprocess of
`python -m invigilator` against the test database."""

from __future__ import annotations

import json
import signal
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from dbtools import add_candidate, shift_session
from invigilator.store import SessionStore
from sweeptools import (
    Lines,
    add_sessions,
    inconsistencies,
    run_cli,
    start_cli,
    statuses,
    swept_lines,
)

minutes = lambda n: timedelta(minutes=n)  # noqa: E731
seconds = lambda n: timedelta(seconds=n)  # noqa: E731


def test_sweep_once_prints_each_session_it_finalized_and_a_total(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    (late,) = add_sessions(db, "late-", 1, started_ago=minutes(61), heartbeat_ago=minutes(1))
    (gone,) = add_sessions(db, "gone-", 1, started_ago=minutes(20), heartbeat_ago=minutes(6))
    (shut,) = add_sessions(
        db,
        "shut-",
        1,
        started_ago=minutes(10),
        heartbeat_ago=seconds(70),
        tab_closed_ago=seconds(61),
    )
    (live,) = add_sessions(db, "live-", 1, started_ago=minutes(10), heartbeat_ago=seconds(5))
    # The documented moments (docs/schema.md, "When a session ends"), read before the sweep.
    moment = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT candidate_id, CASE candidate_id WHEN %s THEN deadline "
            "WHEN %s THEN last_heartbeat + interval '5 minutes' ELSE tab_closed_at END "
            "FROM test_session",
            (late, gone),
        ).fetchall()
    }

    result = run_cli(db_url, "sweep", "--once")

    assert result.returncode == 0, result.stderr
    assert "database: PostgreSQL at" in result.stderr
    assert sorted(swept_lines(result.stdout)) == sorted(
        [
            (late, "completed", "timer_expired", moment[late]),
            (gone, "abandoned", "heartbeat_timeout", moment[gone]),
            (shut, "completed", "tab_close", moment[shut]),
        ]
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[-1] == "finalized 3 session(s): timer_expired=1, tab_close=1, heartbeat_timeout=1"
    stored = db.execute(
        "SELECT candidate_id, status, completion_method, completed_at FROM test_session"
    ).fetchall()
    assert sorted(stored) == sorted(
        [
            (late, "completed", "timer_expired", moment[late]),
            (gone, "abandoned", "heartbeat_timeout", moment[gone]),
            (shut, "completed", "tab_close", moment[shut]),
            (live, "active", None, None),
        ]
    )

    again = run_cli(db_url, "sweep", "--once")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["finalized 0 session(s)"]
    assert inconsistencies(db) == []


def test_sweep_never_creates_the_schema_on_a_database_it_was_pointed_at(
    empty_db_url: str,
) -> None:
    result = run_cli(empty_db_url, "sweep", "--once")
    assert result.returncode == 1
    assert "invigilator db upgrade" in result.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('test_session')").fetchone() == (None,)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_looping_sweeper_stops_promptly_and_cleanly_on_a_signal(
    db_url: str, db: psycopg.Connection[Any], sig: signal.Signals
) -> None:
    add_sessions(db, "late-", 2, started_ago=minutes(61), heartbeat_ago=minutes(1))
    # An hour between passes: only the signal can end the wait in time.
    proc = start_cli(db_url, "sweep", "--interval", "3600", "--batch-size", "1")
    try:
        stderr = Lines(proc.stderr)
        stderr.wait_for("sweeper finalized 2 session(s): timer_expired=2")
        proc.send_signal(sig)
        returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert returncode == 0, stderr.text()
    log = stderr.text()
    assert f"{sig.name}: finishing the current batch, then stopping" in log
    assert "sweeper stopped after 1 pass(es); finalized 2 session(s): timer_expired=2" in log
    assert proc.stdout is not None and proc.stdout.read() == ""
    assert set(statuses(db, ["late-00001", "late-00002"]).values()) == {
        ("completed", "timer_expired")
    }


async def _a_session_with_a_history(store: SessionStore, db: psycopg.Connection[Any]) -> str:
    cid = add_candidate(db, "cand-[bold]7")  # markup-like text is shown as it is
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

    result = run_cli(db_url, "session", "show", cid)

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

    result = run_cli(db_url, "session", "show", cid, "--json")

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
    result = run_cli(db_url, "session", "show", "nobody", "--json")
    assert result.returncode == 1
    assert result.stdout == ""  # nothing a script could mistake for a session
    assert "error: no test session for candidate 'nobody'" in result.stderr
