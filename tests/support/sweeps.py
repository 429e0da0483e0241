"""The sweeper's tests: set-based arranging of many sessions, the "nothing half-finalized"
check, a tripwire that holds a sweeper inside its transaction, and `sweep --once` output."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import psycopg

TERMINAL = ("completed", "abandoned")


def add_sessions(
    conn: psycopg.Connection[Any],
    prefix: str,
    n: int,
    *,
    started_ago: timedelta,
    heartbeat_ago: timedelta | None = None,
    tab_closed_ago: timedelta | None = None,
    duration_minutes: int = 60,
    step: timedelta = timedelta(0),
) -> list[str]:
    """`n` active sessions made in two set-based statements: candidate `{prefix}00001`… started
    `started_ago` (each later one `step` later, its other times moved with it)."""
    params = {
        "p": prefix,
        "n": n,
        "start": started_ago,
        "hb": heartbeat_ago,
        "tab": tab_closed_ago,
        "d": duration_minutes,
        "step": step,
    }
    conn.execute(
        "INSERT INTO candidate (candidate_id) "
        "SELECT %(p)s || lpad(g::text, 5, '0') FROM generate_series(1, %(n)s) g",
        params,
    )
    conn.execute(
        """
        INSERT INTO test_session
               (candidate_id, test_start_time, test_duration_minutes, last_heartbeat, tab_closed_at)
        SELECT %(p)s || lpad(g::text, 5, '0'),
               now() - %(start)s::interval + g * %(step)s::interval,
               %(d)s,
               now() - %(hb)s::interval + g * %(step)s::interval,
               now() - %(tab)s::interval + g * %(step)s::interval
          FROM generate_series(1, %(n)s) g
        """,
        params,
    )
    return [f"{prefix}{g:05d}" for g in range(1, n + 1)]


def add_ended_sessions(
    conn: psycopg.Connection[Any], prefix: str, n: int, *, with_events: bool = True
) -> list[str]:
    """`n` sessions that ended long ago (completed / manual), the bulk of a real table, each
    with its terminal event unless `with_events` is false."""
    params = {"p": prefix, "n": n}
    conn.execute(
        "INSERT INTO candidate (candidate_id) "
        "SELECT %(p)s || lpad(g::text, 6, '0') FROM generate_series(1, %(n)s) g",
        params,
    )
    conn.execute(
        """
        INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes, deadline,
                                  last_heartbeat, status, completion_method, completed_at)
        SELECT %(p)s || lpad(g::text, 6, '0'), s, 60, s + interval '60 minutes',
               s + interval '40 minutes', 'completed', 'manual', s + interval '41 minutes'
          FROM generate_series(1, %(n)s) g,
               LATERAL (SELECT now() - interval '400 days' + g * interval '1 minute' AS s) x
        """,
        params,
    )
    if with_events:
        conn.execute(
            """
            INSERT INTO test_session_event (candidate_id, type, at, actor, detail)
            SELECT candidate_id, 'completed', completed_at, 'candidate',
                   jsonb_build_object('method', 'manual', 'ended_at', completed_at)
              FROM test_session WHERE candidate_id LIKE %(p)s || '%%'
            """,
            params,
        )
    return [f"{prefix}{g:06d}" for g in range(1, n + 1)]


def inconsistencies(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Sessions that are half-finalized: an active one with a terminal event, or an ended one
    without exactly one terminal event that agrees with its status, method and completed_at —
    counted in the session's latest opening (after its last `reopened` event, if any)."""
    return conn.execute(
        """
        SELECT t.candidate_id, t.status, t.completion_method, t.completed_at, e.n, e.types,
               e.methods, e.ended_at
          FROM test_session t
          LEFT JOIN LATERAL (
               SELECT count(*) AS n, array_agg(type) AS types,
                      array_agg(detail ->> 'method') AS methods,
                      min((detail ->> 'ended_at')::timestamptz) AS ended_at
                 FROM test_session_event
                WHERE candidate_id = t.candidate_id AND type IN ('completed', 'abandoned')
                  AND id > coalesce((SELECT max(r.id) FROM test_session_event r
                                      WHERE r.candidate_id = t.candidate_id
                                        AND r.type = 'reopened'), 0)) e
            ON true
         WHERE (t.status = 'active' AND e.n <> 0)
            OR (t.status <> 'active' AND (e.n <> 1 OR e.types[1] <> t.status
                OR e.methods[1] <> t.completion_method OR e.ended_at <> t.completed_at))
        """
    ).fetchall()


def statuses(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, tuple[str, str | None]]:
    rows = conn.execute(
        "SELECT candidate_id, status, completion_method FROM test_session "
        "WHERE candidate_id = ANY(%s)",
        (ids,),
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def terminal_event_count(conn: psycopg.Connection[Any], ids: list[str]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM test_session_event WHERE candidate_id = ANY(%s) AND type = ANY(%s)",
        (ids, list(TERMINAL)),
    ).fetchone()
    assert row is not None
    return int(row[0])


TRIPWIRE_LOCK = 4242
#: Why a test with the tripwire is marked not_on_citus.
TRIPWIRE_ON_ONE_SERVER = (
    "the tripwire is a trigger and an advisory lock on one server: Citus refuses a trigger on a "
    "distributed table unless told it is safe, and then it fires on a worker's shard, out of "
    "reach of the test's lock on the coordinator"
)


def install_tripwire(conn: psycopg.Connection[Any], candidate_id: str) -> None:
    """Make any transaction that writes `candidate_id`'s terminal event wait, mid-statement
    (after its UPDATE has started, before that event is in), for advisory lock TRIPWIRE_LOCK."""
    conn.execute(
        f"""
        CREATE FUNCTION test_tripwire() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.candidate_id = '{candidate_id}' AND NEW.type IN ('completed', 'abandoned') THEN
                PERFORM pg_advisory_xact_lock_shared({TRIPWIRE_LOCK});
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_tripwire BEFORE INSERT ON test_session_event
            FOR EACH ROW EXECUTE FUNCTION test_tripwire();
        """
    )


def remove_tripwire(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP TRIGGER test_tripwire ON test_session_event; DROP FUNCTION test_tripwire()")


def backends_waiting(conn: psycopg.Connection[Any], wait_event: str) -> list[int]:
    """Pids of this database's backends waiting on a heavyweight lock of this kind."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = %s",
        (wait_event,),
    ).fetchall()
    return [r[0] for r in rows]


def backend_alive(conn: psycopg.Connection[Any], pid: int) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None
    )


SWEPT_LINE = re.compile(r"^(\S+)  (completed|abandoned)/(\w+)  (\S+)$")


def swept_lines(stdout: str) -> list[tuple[str, str, str, datetime]]:
    """The per-session lines of `invigilator sweep --once`, parsed."""
    found = []
    for line in stdout.splitlines():
        m = SWEPT_LINE.match(line)
        if m:
            found.append((m[1], m[2], m[3], datetime.fromisoformat(m[4])))
    return found
