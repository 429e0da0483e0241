"""`db upgrade`: prerequisites, host applications' candidate tables, adoption of a table made
from the guide's SQL, idempotency and concurrent upgrades."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from invigilator import sql
from invigilator.db import connector, migrate
from invigilator.db.verify import verify
from invigilator.domain import SchemaProblem
from invigilator.store import SessionStore
from support.cli import run_cli, start_cli
from support.db import TEST_POLICY
from support.waiting import wait_until

FIXTURES = Path(__file__).parent / "fixtures"
ALL_VERSIONS = [m.version for m in sql.migrations()]


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def failed_checks(url: str) -> list[str]:
    with connect(url) as conn:
        return [c.name for c in verify(conn) if not c.ok]


def test_without_candidate_table_upgrade_stops_with_the_guides_advice(empty_db_url: str) -> None:
    with pytest.raises(SchemaProblem) as caught:
        migrate.upgrade(empty_db_url)
    assert 'relation "candidate" does not exist' in caught.value.message
    assert "--create-candidate-table" in caught.value.message
    with connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('test_session')").fetchone() == (None,)


def test_cli_upgrade_without_candidate_table_exits_1_in_plain_words(empty_db_url: str) -> None:
    result = run_cli("db", "upgrade", db_url=empty_db_url)
    assert result.returncode == 1
    assert 'relation "candidate" does not exist' in result.stderr
    assert "Traceback" not in result.stderr


def test_create_candidate_table_then_verify_passes(empty_db_url: str) -> None:
    result = run_cli("db", "upgrade", "--create-candidate-table", db_url=empty_db_url)
    assert result.returncode == 0, result.stderr
    assert "applied 0001_test_session" in result.stdout
    verified = run_cli("db", "verify", db_url=empty_db_url)
    assert verified.returncode == 0, verified.stdout
    assert "all" in verified.stdout and "checks passed" in verified.stdout


def test_upgrade_is_idempotent(empty_db_url: str) -> None:
    applied = migrate.upgrade(empty_db_url, create_candidate_table=True)
    assert [m.version for m in applied] == ALL_VERSIONS
    assert migrate.upgrade(empty_db_url) == []
    assert failed_checks(empty_db_url) == []


def test_verify_fails_with_nonzero_exit_when_something_is_missing(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, create_candidate_table=True)
    with connect(empty_db_url) as conn:
        conn.execute("DROP INDEX idx_test_session_status")
        conn.execute("DROP TRIGGER test_session_updated_at ON test_session")
    result = run_cli("db", "verify", db_url=empty_db_url)
    assert result.returncode == 1
    assert failed_checks(empty_db_url) == [
        "index idx_test_session_status",
        "trigger test_session_updated_at",
    ]


HOST_TABLES = {
    "varchar36_with_extra_columns": """
        CREATE TABLE candidate (
            candidate_id varchar(36) PRIMARY KEY,
            email text NOT NULL DEFAULT '',
            full_name text,
            created_at timestamp DEFAULT CURRENT_TIMESTAMP)""",
    "text_key": "CREATE TABLE candidate (candidate_id text PRIMARY KEY, name text)",
    "uuid_key": "CREATE TABLE candidate (candidate_id uuid PRIMARY KEY, name text)",
    "unique_not_pk": """
        CREATE TABLE candidate (id serial PRIMARY KEY, candidate_id varchar(64) UNIQUE NOT NULL)""",
}


@pytest.mark.parametrize("ddl", HOST_TABLES.values(), ids=HOST_TABLES.keys())
async def test_host_candidate_table_is_referenced_as_it_is(empty_db_url: str, ddl: str) -> None:
    with connect(empty_db_url) as conn:
        conn.execute(ddl)
        cid = str(uuid.uuid4())
        conn.execute("INSERT INTO candidate (candidate_id) VALUES (%s)", (cid,))
    migrate.upgrade(empty_db_url)
    assert failed_checks(empty_db_url) == []
    pool = connector.pool_for(empty_db_url, min_size=1, max_size=2)
    async with pool:
        store = SessionStore(pool, TEST_POLICY)
        session, created = await store.start(cid, duration_minutes=30)
        assert created and session.candidate_id == cid
        await store.heartbeat(cid, active=True)
        await store.save_answers(cid, {"q1": "yes"}, 1)
        done, first = await store.complete(cid)
        assert first and done.status == "completed"
        assert next(e.type for e in await store.events(cid)) == "started"


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("CREATE TABLE candidate (candidate_id integer PRIMARY KEY)", "type integer"),
        ("CREATE TABLE candidate (candidate_id varchar(36))", "not unique"),
        ("CREATE TABLE candidate (id varchar(36) PRIMARY KEY)", 'column "candidate_id" does not'),
    ],
    ids=["integer_key", "not_unique", "no_candidate_id"],
)
def test_incompatible_candidate_table_is_refused_clearly(
    empty_db_url: str, ddl: str, message: str
) -> None:
    with connect(empty_db_url) as conn:
        conn.execute(ddl)
    with pytest.raises(SchemaProblem) as caught:
        migrate.upgrade(empty_db_url)
    assert message in caught.value.message
    with connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('test_session')").fetchone() == (None,)


def seed_database(url: str) -> None:
    """A database as the guide left it: candidate table, seed-made test_session, rows."""
    with connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("CREATE TABLE candidate (candidate_id varchar(36) PRIMARY KEY, name text)")
        conn.execute((FIXTURES / "seed_test_session.sql").read_text())
        rows = [
            # candidate, status, method, completed_at, sections, answers
            ("c-active", "active", None, None, ["s1"], {"q1": "a"}),
            ("c-manual", "completed", "manual", "2026-01-05 10:40", ["s1", "s2"], {}),
            ("c-timer", "completed", "timer_expired", "2026-01-05 11:00", [], {"q": 1}),
            # rows the guide's looser rules allowed:
            ("c-old-abandon", "abandoned", "abandoned", "2026-01-05 10:20", [], {}),
            ("c-no-method", "completed", None, None, None, None),
            ("c-null-status", None, None, None, {"oops": 1}, ["not", "an", "object"]),
        ]
        for cid, status, method, completed_at, sections, answers in rows:
            conn.execute("INSERT INTO candidate (candidate_id) VALUES (%s)", (cid,))
            conn.execute(
                """INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                       last_heartbeat, status, completion_method, completed_at,
                       sections_completed, pending_answers)
                   VALUES (%s, '2026-01-05 10:00', 60, '2026-01-05 10:15', %s, %s, %s, %s, %s)""",
                (
                    cid,
                    status,
                    method,
                    completed_at,
                    Jsonb(sections) if sections is not None else None,
                    Jsonb(answers) if answers is not None else None,
                ),
            )


def test_adopts_a_seed_made_table_without_losing_a_row(empty_db_url: str) -> None:
    seed_database(empty_db_url)
    with connect(empty_db_url) as conn:
        before = conn.execute(
            "SELECT candidate_id, test_start_time, last_heartbeat FROM test_session ORDER BY 1"
        ).fetchall()
    applied = migrate.upgrade(empty_db_url, create_candidate_table=True)
    assert [m.version for m in applied] == ALL_VERSIONS
    assert failed_checks(empty_db_url) == []
    with connect(empty_db_url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        after = conn.execute(
            "SELECT candidate_id, test_start_time::timestamp, last_heartbeat::timestamp "
            "FROM test_session ORDER BY 1"
        ).fetchall()
        assert after == before  # every row, same instants (read as UTC, as written)
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute(
                "SELECT candidate_id, status, completion_method, completed_at IS NOT NULL, "
                "sections_completed, pending_answers FROM test_session"
            ).fetchall()
        )
        assert rows["c-active"] == ("active", None, False, ["s1"], {"q1": "a"})
        assert rows["c-manual"] == ("completed", "manual", True, ["s1", "s2"], {})
        assert rows["c-old-abandon"] == ("abandoned", "heartbeat_timeout", True, [], {})
        assert rows["c-no-method"] == ("completed", "manual", True, [], {})
        assert rows["c-null-status"] == ("active", None, False, [{"oops": 1}], {})
        adopted = dict(
            conn.execute(
                "SELECT candidate_id, detail -> 'original' FROM test_session_event "
                "WHERE type = 'adopted'"
            ).fetchall()
        )
        assert set(adopted) == {"c-old-abandon", "c-no-method", "c-null-status"}
        # the original values survive in the event, e.g. answers that were not an object
        assert adopted["c-null-status"]["pending_answers"] == ["not", "an", "object"]
        # the guide's btree on last_heartbeat became BRIN; its own trigger still works
        (indexdef,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_test_session_last_heartbeat'"
        ).fetchall()
        assert "USING brin" in indexdef[0]
        conn.execute(
            "UPDATE test_session SET status = 'completed', completion_method = 'admin', "
            "completed_at = now() WHERE candidate_id = 'c-active'"
        )
    assert migrate.upgrade(empty_db_url) == []


def test_two_processes_upgrading_at_once_are_safe(empty_db_url: str) -> None:
    with connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE candidate (candidate_id varchar(36) PRIMARY KEY)")
        # Hold the migration lock so both processes are surely waiting at the same time.
        conn.execute("SELECT pg_advisory_lock(%s, %s)", migrate.LOCK_KEY)
        procs = [start_cli("db", "upgrade", db_url=empty_db_url) for _ in range(2)]
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                == (2,)
            ),
            "both upgrades to wait for the migration lock",
            within=10,
        )
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", migrate.LOCK_KEY)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    applied_lines = sum(out.count("applied 0001_test_session") for out, _ in outputs)
    assert applied_lines == 1
    with connect(empty_db_url) as conn:
        count = conn.execute("SELECT count(*) FROM invigilator_schema_migration").fetchone()
        assert count == (len(ALL_VERSIONS),)
    assert failed_checks(empty_db_url) == []
