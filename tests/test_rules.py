"""The session rules as SQL functions (migration 0003): the names Python knows agree with them,
they are inlined (no function call per row), and the timeline is written once, by the trigger,
whoever changes the row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from invigilator.db.connector import constraint_name
from invigilator.domain import Method, Status
from invigilator.store import SessionStore
from support.db import TEST_POLICY, add_candidate, shift_session
from support.guide import sql_blocks, statements


def test_every_method_leads_to_one_status_and_nothing_else_is_a_method(
    db: psycopg.Connection[Any],
) -> None:
    for method in Method:
        (status,) = db.execute("SELECT test_session_status_of(%s)", (method.value,)).fetchone()
        assert Status(status) is not Status.ACTIVE, method
    assert db.execute("SELECT test_session_status_of('abandoned')").fetchone() == (None,)
    assert db.execute("SELECT test_session_status_of(NULL)").fetchone() == (None,)
    gave_up = {
        m
        for m in Method
        if db.execute("SELECT test_session_gave_up(%s)", (m.value,)).fetchone() == (True,)
    }
    assert gave_up == {Method.HEARTBEAT_TIMEOUT, Method.TAB_CLOSE, Method.ADMIN_TERMINATED}


def test_a_status_that_does_not_match_its_method_is_refused(db: psycopg.Connection[Any]) -> None:
    cid = add_candidate(db)
    db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (cid,))
    for status, method in (("completed", "heartbeat_timeout"), ("abandoned", "manual")):
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            db.execute(
                "UPDATE test_session SET status = %s, completion_method = %s, "
                "completed_at = now() WHERE candidate_id = %s",
                (status, method, cid),
            )
        assert constraint_name(refused.value) == "test_session_status_method_check"


@pytest.mark.not_on_citus("EXPLAIN on a coordinator shows the distributed plan, not the shard's")
def test_the_guard_is_inlined_into_the_statement(db: psycopg.Connection[Any]) -> None:
    """The rules are plain expressions once planned: no SQL function runs per row."""
    rules = TEST_POLICY.sql_params()
    columns = (
        "t.status, t.deadline, t.last_heartbeat, t.test_start_time, t.tab_closed_at, "
        "t.paused_at, t.resumed_at, t.abandon_after_seconds, t.tab_close, t.at_deadline, "
        "t.grace_seconds, t.time_multiplier, c"
    )
    for guard in ("test_session_open", "test_session_takes_answers"):
        plan = "\n".join(
            row[0]
            for row in db.execute(
                "EXPLAIN (VERBOSE) SELECT count(*) FROM test_session t, "
                f"invigilator_rules(%(policy)s::jsonb) AS c WHERE {guard}({columns})",
                rules,
            ).fetchall()
        )
        for rule in (
            guard,
            "test_session_due_at",
            "test_session_end_method",
            "test_session_heard_at",
            "test_session_abandon_after",
            "test_session_submit_grace",
            "invigilator_rules",
        ):
            assert f"{rule}(" not in plan, plan
        assert "last_heartbeat" in plan and "paused_at" in plan  # the expression is there


def _timeline(db: psycopg.Connection[Any], cid: str) -> list[tuple[str, str]]:
    return [
        (type_, actor)
        for type_, actor in db.execute(
            "SELECT type, actor FROM test_session_event WHERE candidate_id = %s ORDER BY at, id",
            (cid,),
        ).fetchall()
    ]


def test_changes_made_with_the_guides_own_sql_are_in_the_timeline(
    db: psycopg.Connection[Any],
) -> None:
    cid = "candidate-uuid-here"
    add_candidate(db, cid)
    insert, heartbeat, sections, complete = sql_blocks("Example Usage")[:4]
    for block in (insert, heartbeat, sections):
        for statement in statements(block):
            db.execute(statement)
    shift_session(db, cid, last_heartbeat=timedelta(minutes=2))
    for statement in statements(heartbeat):  # back after a silence: `resumed`
        db.execute(statement)
    for statement in statements(complete):
        db.execute(statement)
    assert _timeline(db, cid) == [
        ("started", "sql"),
        ("section_completed", "sql"),
        ("section_completed", "sql"),
        ("resumed", "sql"),
        ("completed", "sql"),
    ]
    details = [
        d
        for (d,) in db.execute(
            "SELECT detail FROM test_session_event WHERE candidate_id = %s ORDER BY at, id", (cid,)
        )
    ]
    assert [d["section"] for d in details[1:3]] == ["section1", "section2"]
    assert details[-1]["method"] == "manual"


async def test_a_change_made_through_the_service_is_logged_once_with_its_actor(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid, actor="staff:abc")
    await store.save_answers(cid, {"q1": "x"}, seq=1)
    await store.complete_section(cid, "intro")
    await store.extend(cid, 5, actor="staff:abc", reason="noise")
    await store.tab_close(cid)
    await store.heartbeat(cid)  # a reload: `resumed` after the tab close
    await store.complete(cid)
    assert _timeline(db, cid) == [
        ("started", "staff:abc"),
        ("answers_saved", "candidate"),
        ("section_completed", "candidate"),
        ("time_extended", "staff:abc"),
        ("tab_closed", "candidate"),
        ("resumed", "candidate"),
        ("completed", "candidate"),
    ]


async def test_lazy_expiry_and_the_sweeper_name_themselves_in_the_timeline(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    lazy, swept = add_candidate(db), add_candidate(db)
    for cid in (lazy, swept):
        await store.start(cid)
        shift_session(db, cid, test_start_time=timedelta(minutes=61), last_heartbeat=timedelta(0))
    await store.get(lazy)
    await store.finalize_due(10)
    assert _timeline(db, lazy)[-1] == ("completed", "system")
    assert _timeline(db, swept)[-1] == ("completed", "sweeper")
