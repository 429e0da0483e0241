"""Helpers for arranging test data in a real database (imported by tests; not fixtures)."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql as pgsql

from invigilator.config import Settings
from invigilator.domain import AtDeadline, Policy, TabClosePolicy
from invigilator.service import Sessions
from invigilator.store import SessionStore

#: Citus mode (docs/scaling.md): INVIGILATOR_TEST_DATABASE_URL names a Citus coordinator and
#: INVIGILATOR_TEST_CITUS_WORKERS its workers ("host:port,host:port", same role and password).
#: The template is migrated and then distributed (`db distribute`), and every test's database
#: is cloned from it on every node under one name: Citus reaches a worker's shards in the
#: database of the coordinator's name, so the clones form a cluster of their own.
CITUS_WORKERS = [
    w.strip() for w in os.environ.get("INVIGILATOR_TEST_CITUS_WORKERS", "").split(",") if w.strip()
]

#: A test_session row's committed answers and their seqs, as test_session_answers() and
#: test_session_answer_seqs() give them, for a query FROM test_session: written out because on
#: Citus a function that reads a table cannot run in a query pushed down to a shard.
ANSWERS = (
    "(SELECT coalesce(jsonb_object_agg(x.question, x.value), '{}'::jsonb)"
    " FROM test_session_answer x WHERE x.candidate_id = test_session.candidate_id)"
)
SEQS = (
    "(SELECT coalesce(jsonb_object_agg(x.question, x.seq), '{}'::jsonb)"
    " FROM test_session_answer x WHERE x.candidate_id = test_session.candidate_id)"
)

#: The timing rules the tests run with (the documented defaults, spelled out).
TEST_POLICY = Policy(
    abandon_after=timedelta(minutes=5),
    deadline_grace=timedelta(0),
    tab_close_grace=timedelta(seconds=60),
    tab_close_policy=TabClosePolicy.SUBMIT,
    heartbeat_interval=timedelta(seconds=15),
    answers_mirror_delay=timedelta(seconds=30),
    at_deadline=AtDeadline.SUBMIT,
    grace=timedelta(minutes=5),
)
#: The input limits the tests run with: the settings' defaults.
TEST_LIMITS = Settings().limits()


def sessions_of(store: SessionStore) -> Sessions:
    """The service over a test's store: what the sweeper, routes and commands call."""
    return Sessions(store, TEST_LIMITS)


def add_candidate(conn: psycopg.Connection[Any], candidate_id: str | None = None) -> str:
    candidate_id = candidate_id or str(uuid.uuid4())
    conn.execute("INSERT INTO candidate (candidate_id) VALUES (%s)", (candidate_id,))
    return candidate_id


def shift_session(conn: psycopg.Connection[Any], candidate_id: str, **ago: timedelta) -> None:
    """Move a session's timestamps into the past: tests move time, they never sleep.

    `shift_session(db, cid, test_start_time=timedelta(minutes=61))` sets the start to
    now() - 61 minutes (the deadline trigger follows).
    """
    allowed = {
        "test_start_time",
        "last_heartbeat",
        "last_activity",
        "tab_closed_at",
        "paused_at",
        "resumed_at",
        "reopened_at",
    }
    assert set(ago) <= allowed, set(ago) - allowed
    assignments = pgsql.SQL(", ").join(
        pgsql.SQL("{} = now() - {}").format(pgsql.Identifier(col), pgsql.Literal(delta))
        for col, delta in ago.items()
    )
    conn.execute(
        pgsql.SQL("UPDATE test_session SET {} WHERE candidate_id = %s").format(assignments),
        (candidate_id,),
    )
