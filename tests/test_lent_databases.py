"""The suite's own isolation: a database lent again (support/databases.py `Databases`) is as
a fresh clone would be, and one whose schema a test changed is never lent again."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from support.databases import Databases

pytestmark = pytest.mark.not_on_citus("Citus mode clones a fresh database for every test")


def _dbname(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def _exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def test_a_lent_database_comes_back_empty_with_unused_sequences(
    server_url: str, template_db: str
) -> None:
    databases = Databases()
    lending = databases.lend(server_url, template_db)
    url = next(lending)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO candidate (candidate_id) VALUES ('lent-1')")
        conn.execute("INSERT INTO test_session (candidate_id) VALUES ('lent-1')")
        conn.execute(
            "INSERT INTO test_session_event (candidate_id, type) VALUES ('lent-1', 'started')"
        )
        conn.execute("ANALYZE test_session")
        stray: psycopg.Connection[Any] = psycopg.connect(url)  # left open, mid-transaction
        stray.execute("SELECT count(*) FROM test_session")
    next(lending, None)  # the test ends
    assert databases.spare and _dbname(url) == databases.spare[0][0]

    again = databases.lend(server_url, template_db)
    assert next(again) == url
    with psycopg.connect(url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM candidate), (SELECT count(*) FROM test_session),"
            " (SELECT count(*) FROM test_session_event),"
            " (SELECT count(*) FROM pg_statistic WHERE starelid = 'test_session'::regclass),"
            " (SELECT count(*) FROM invigilator_schema_migration)"
        ).fetchone()
        assert counts is not None and counts[:4] == (0, 0, 0, 0) and counts[4] > 0
        unused = conn.execute(
            "SELECT count(*) FILTER (WHERE last_value IS NULL), count(*) FROM pg_sequences"
        ).fetchone()
        assert unused is not None and unused[0] == unused[1] > 0  # as in a new clone
    assert stray.closed or stray.broken or _stray_is_gone(stray)
    next(again, None)
    for name, _ in databases.spare:
        _drop_quietly(server_url, name)


def test_a_lent_database_looks_to_the_planner_as_a_fresh_clone(
    server_url: str, template_db: str
) -> None:
    """A few rows are deleted (their dead versions stay, under the ten pages the planner
    assumes of a table never vacuumed) and a test's ANALYZE is undone; a table grown past
    that is truncated."""
    databases = Databases()

    def planner_view(url: str) -> tuple[Any, ...]:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT reltuples, pg_relation_size(oid) FROM pg_class"
                " WHERE oid = 'test_session'::regclass"
            ).fetchone()
        assert row is not None
        return tuple(row)

    def fill(url: str, sessions: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO candidate SELECT 'lent-' || i FROM generate_series(1, %s) i",
                (sessions,),
            )
            conn.execute(
                "INSERT INTO test_session (candidate_id) SELECT candidate_id FROM candidate"
            )
            conn.execute("ANALYZE test_session")

    lending = databases.lend(server_url, template_db)
    url = next(lending)
    fresh = planner_view(url)
    assert fresh == (-1, 0)  # never vacuumed nor analyzed, no page
    fill(url, 3)
    next(lending, None)
    again = databases.lend(server_url, template_db)
    assert next(again) == url
    reltuples, size = planner_view(url)
    assert reltuples == -1 and 0 < size <= 8 * 8192  # deleted: the dead rows' page stays
    fill(url, 2000)
    assert planner_view(url)[1] > 8 * 8192
    next(again, None)
    third = databases.lend(server_url, template_db)
    assert next(third) == url
    assert planner_view(url) == fresh  # truncated
    next(third, None)
    for name, _ in databases.spare:
        _drop_quietly(server_url, name)


def _stray_is_gone(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def _drop_quietly(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    "change",
    [
        "CREATE TABLE extra (x int)",
        "ALTER TABLE test_session ADD COLUMN extra int",
        "CREATE OR REPLACE FUNCTION test_session_status_of(method text) RETURNS text"
        " LANGUAGE sql IMMUTABLE AS $$SELECT 'active'$$",
        "COMMENT ON TABLE candidate IS 'changed'",
        "DELETE FROM invigilator_schema_migration",
        "DROP TRIGGER IF EXISTS test_session_updated_at ON test_session",
    ],
)
def test_a_database_whose_schema_a_test_changed_is_dropped(
    server_url: str, template_db: str, change: str
) -> None:
    databases = Databases()
    lending = databases.lend(server_url, template_db)
    url = next(lending)
    name = _dbname(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(change)
    next(lending, None)
    assert databases.spare == []
    assert not _exists(server_url, name)
