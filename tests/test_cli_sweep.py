"""`invigilator sweep`, run as a user runs it: a subprocess of `python -m invigilator` against
the test database."""

from __future__ import annotations

import re
import signal
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from support.cli import Lines, run_cli, start_cli
from support.sweeps import add_sessions, inconsistencies, statuses, swept_lines

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

    result = run_cli("sweep", "--once", db_url=db_url)

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

    again = run_cli("sweep", "--once", db_url=db_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["finalized 0 session(s)"]
    assert inconsistencies(db) == []


@pytest.mark.not_on_citus("a distributed database keeps no rollup (docs/scaling.md)")
def test_sweep_once_also_rolls_up_ended_sessions_for_the_report(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO candidate (candidate_id) VALUES ('old-1');"
        " INSERT INTO test_session (candidate_id, test_start_time, status, completion_method,"
        " completed_at) VALUES ('old-1', now() - interval '3 hours', 'completed', 'manual',"
        " now() - interval '2 hours')"
    )
    result = run_cli("sweep", "--once", db_url=db_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["finalized 0 session(s)"]
    assert re.search(r"rolled up \d+ quarter hour\(s\) of ended sessions", result.stderr)
    row = db.execute(
        "SELECT r.ready, r.sessions, r.completed FROM test_session_rollup r JOIN test_session t"
        " ON r.bucket = test_session_rollup_bucket(t.test_start_time)"
        " WHERE t.candidate_id = 'old-1'"
    ).fetchone()
    assert row == (True, 1, 1)


def test_sweep_never_creates_the_schema_on_a_database_it_was_pointed_at(
    empty_db_url: str,
) -> None:
    result = run_cli("sweep", "--once", db_url=empty_db_url)
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
    proc = start_cli("sweep", "--interval", "3600", "--batch-size", "1", db_url=db_url)
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


def test_sweep_logs_in_the_format_and_at_the_level_the_settings_say(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    (late,) = add_sessions(db, "late-", 1, started_ago=minutes(61), heartbeat_ago=minutes(1))
    env = {"INVIGILATOR_LOG_FORMAT": "text", "INVIGILATOR_LOG_LEVEL": "DEBUG"}
    proc = start_cli("sweep", "--interval", "3600", db_url=db_url, env=env)
    try:
        stderr = Lines(proc.stderr)
        line = stderr.wait_for(f"finalized {late}: completed/timer_expired")  # a DEBUG line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, stderr.text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG invigilator\.sweeper: ", line)
