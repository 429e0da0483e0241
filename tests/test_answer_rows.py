"""Answers as rows (migration 0006): what `pending_answers` holds and when, that every reader
sees every committed answer at once, and that adopting a database keeps every answer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from invigilator import sql
from invigilator.db import migrate
from invigilator.domain import PayloadTooLarge
from invigilator.store import SessionStore
from support.db import (
    CITUS_WORKERS,
    TEST_POLICY,
    add_candidate,
    sessions_of,
    shift_session,
)


def mirror(db: psycopg.Connection[Any], cid: str) -> tuple[Any, Any]:
    row = db.execute(
        "SELECT pending_answers, answer_seq FROM test_session WHERE candidate_id = %s", (cid,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def age_unsynced(db: psycopg.Connection[Any], by: timedelta) -> None:
    # invigilator_plus: on Citus an UPDATE takes no STABLE `-` over a column.
    db.execute(
        "UPDATE test_session_answer_unsynced SET since = invigilator_plus(since, -%s)", (by,)
    )


async def test_pending_answers_mirrors_the_rows_within_the_delay_and_exactly_at_the_end(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "first", "q2": [1, 2]}, seq=1)
    await store.save_answers(cid, {"q1": "second"}, seq=2)
    # Every reader of the service sees every committed answer at once...
    assert (await store.get(cid)).pending_answers == {"q1": "second", "q2": [1, 2]}
    # ...while the guide's column lags, by at most the mirror delay (and a sweep).
    assert mirror(db, cid) == ({}, {})
    sessions = sessions_of(store)
    await sessions.sweep(100)
    assert mirror(db, cid) == ({}, {})  # younger than the delay: left for a later pass
    age_unsynced(db, TEST_POLICY.answers_mirror_delay)
    await sessions.sweep(100)
    assert mirror(db, cid) == ({"q1": "second", "q2": [1, 2]}, {"q1": 2, "q2": 1})
    # The end writes it exactly, in the same transaction, with no wait.
    await store.save_answers(cid, {"q3": "last"}, seq=3)
    ended, _ = await store.complete(cid)
    assert ended.pending_answers == {"q1": "second", "q2": [1, 2], "q3": "last"}
    assert mirror(db, cid)[0] == ended.pending_answers
    assert db.execute("SELECT count(*) FROM test_session_answer_unsynced").fetchone() == (0,)


async def test_a_save_in_flight_while_the_sweeper_refreshes_the_mirror_is_not_left_out(
    store: SessionStore, db: psycopg.Connection[Any], db_url: str
) -> None:
    """A save whose statement has run but not yet committed when the sweeper picks its
    session: the refresh must not copy the rows from before it and then forget that the
    session lags (it would until the session's next save or its end)."""
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "kept"}, seq=1)
    age_unsynced(db, TEST_POLICY.answers_mirror_delay)
    save = "save_answers_distributed" if CITUS_WORKERS else "save_answers"
    with psycopg.connect(db_url) as saving:  # a transaction, committed below
        saving.execute(
            sql.queries()[save],
            {**TEST_POLICY.sql_params(), "candidate_id": cid, "answers": Jsonb({"q1": "late"}),
             "seq": 2, "max_total_bytes": None, "page_id": None},
        )  # fmt: skip
        refresh = asyncio.create_task(store.sync_lagging_answers(10))
        waiting = (  # on Citus the refresh waits on a worker
            "SELECT 1 FROM citus_lock_waits"
            if CITUS_WORKERS
            else "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        for _ in range(100):  # until the refresh is done or waits for the save's lock
            await asyncio.sleep(0.05)
            if refresh.done() or db.execute(waiting).fetchone():
                break
        saving.commit()
    await refresh
    age_unsynced(db, TEST_POLICY.answers_mirror_delay)
    await store.sync_lagging_answers(10)
    assert mirror(db, cid) == ({"q1": "late"}, {"q1": 2})


async def test_sessions_the_sweeper_or_lazy_expiry_end_have_an_exact_mirror(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    lazy, swept = add_candidate(db), add_candidate(db)
    for cid in (lazy, swept):
        await store.start(cid)
        await store.save_answers(cid, {"q": cid}, seq=1)
        shift_session(db, cid, test_start_time=timedelta(minutes=61), last_heartbeat=timedelta(0))
    await store.get(lazy)
    await sessions_of(store).sweep(10)
    for cid in (lazy, swept):
        assert mirror(db, cid) == ({"q": cid}, {"q": 1})


async def test_a_webhook_shows_every_committed_answer_at_once(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO webhook_endpoint (url, secret, include_answers)"
        " VALUES ('http://127.0.0.1:9/hook', 'whsec_test', true)"
    )
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "typed"}, seq=1)
    await store.extend(cid, 5)  # session.time_extended, while the mirror still lags
    (payload,) = db.execute(
        "SELECT payload FROM webhook_delivery WHERE type = 'session.time_extended'"
    ).fetchone() or (None,)
    assert payload["pending_answers"] == {"q1": "typed"}
    assert mirror(db, cid)[0] == {}


async def test_an_older_save_never_beats_a_newer_one_and_superseded_keys_are_said(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    newer = await store.save_answers(cid, {"q": "new"}, seq=5)
    older = await store.save_answers(cid, {"q": "old", "r": "other"}, seq=4)
    assert (newer.applied, newer.superseded) == (["q"], [])
    assert (older.applied, older.superseded) == (["r"], ["q"])
    session = await store.get(cid)
    assert session.pending_answers == {"q": "new", "r": "other"}
    assert session.answer_seq == {"q": 5, "r": 4}
    saved = [e.detail for e in await store.events(cid) if e.type == "answers_saved"]
    assert saved == [{"questions": ["q"], "seq": 5}, {"questions": ["r"], "seq": 4}]


def test_adopting_a_database_keeps_every_answer(empty_db_url: str) -> None:
    """A database migrated up to just before answer rows, with answers in pending_answers,
    upgraded: each answer becomes its row."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE candidate (candidate_id varchar(36) PRIMARY KEY)")
        conn.execute(migrate.TRACKING_TABLE_SQL)
        (rows_at,) = [m.version for m in sql.migrations() if m.name == "answer_rows"]
        for migration in [m for m in sql.migrations() if m.version < rows_at]:
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(migrate._record_sql(migration))
        conn.execute("INSERT INTO candidate VALUES ('old-1'), ('old-2')")
        conn.execute(
            "INSERT INTO test_session (candidate_id, pending_answers, answer_seq) VALUES "
            "('old-1', %s, %s), ('old-2', '{}', '{}')",
            (Jsonb({"q1": "kept", "q2": {"code": "x = 1"}}), Jsonb({"q1": 3, "q2": 7})),
        )
    migrate.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT candidate_id, question, value, seq FROM test_session_answer ORDER BY 1, 2"
        ).fetchall()
        assert rows == [("old-1", "q1", "kept", 3), ("old-1", "q2", {"code": "x = 1"}, 7)]
        (answers,) = conn.execute(
            "SELECT test_session_answers(candidate_id) FROM test_session"
            " WHERE candidate_id = 'old-1'"
        ).fetchone() or (None,)
        assert answers == {"q1": "kept", "q2": {"code": "x = 1"}}
        # the running total of the per-session limit starts exact (migration 0010)
        totals = conn.execute(
            "SELECT candidate_id, bytes FROM test_session_answer_total"
        ).fetchall()
        assert totals == [("old-1", len('"kept"q1{"code": "x = 1"}q2'))]


def total(db: psycopg.Connection[Any], cid: str) -> tuple[Any, Any]:
    """(the running total, the sum it stands for) of a session's answers."""
    row = db.execute(
        "SELECT (SELECT bytes FROM test_session_answer_total WHERE candidate_id = %s),"
        " (SELECT sum(bytes + octet_length(question)) FROM test_session_answer"
        "   WHERE candidate_id = %s)",
        (cid, cid),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_the_running_total_follows_every_save_superseded_and_refused_ones_too(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "a" * 100, "q2": [1, 2]}, seq=1)
    await store.save_answers(cid, {"q1": "b" * 10}, seq=3)  # shrinks q1
    await store.save_answers(cid, {"q1": "c" * 900, "q3": "new"}, seq=2)  # q1 superseded
    await store.save_answers(cid, {"q1": "b" * 10}, seq=3)  # a retry
    with pytest.raises(PayloadTooLarge):
        await store.save_answers(cid, {"q4": "x" * 5000}, seq=4, max_total_bytes=1024)
    bytes_, exact = total(db, cid)
    assert bytes_ == exact == len('"bbbbbbbbbb"q1[1, 2]q2"new"q3')


async def test_the_limit_counts_what_a_save_replaces_not_what_it_adds_on_top(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q": "x" * 700}, seq=1, max_total_bytes=1024)
    # 700 + 700 would not fit, but the new value replaces the old one.
    await store.save_answers(cid, {"q": "y" * 700}, seq=2, max_total_bytes=1024)
    with pytest.raises(PayloadTooLarge):
        await store.save_answers(cid, {"r": "z" * 400}, seq=3, max_total_bytes=1024)
    assert (await store.get(cid)).pending_answers == {"q": "y" * 700}


async def test_concurrent_saves_of_one_session_keep_the_total_exact(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """Saves racing on one session (many tabs): each moves the total by what its rows say they
    added, on the total's latest version, so the total never drifts."""
    cid = add_candidate(db)
    await store.start(cid)
    await asyncio.gather(
        *(
            store.save_answers(cid, {f"q{i % 5}": "v" * (i * 7), f"n{i}": i}, seq=i)
            for i in range(1, 41)
        )
    )
    bytes_, exact = total(db, cid)
    assert bytes_ == exact
    assert (await store.get(cid)).answer_seq == {
        **{f"q{k}": max(i for i in range(1, 41) if i % 5 == k) for k in range(5)},
        **{f"n{i}": i for i in range(1, 41)},
    }


async def test_rows_without_a_total_get_theirs_when_the_schema_is_upgraded(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """Rows written by plain SQL (or by a version before the totals) are summed by the
    migration; a save then moves that total by what it replaces."""
    cid = add_candidate(db)
    await store.start(cid)
    db.execute(
        "INSERT INTO test_session_answer (candidate_id, question, value, seq, bytes)"
        " VALUES (%s, 'old', '\"kept\"', 1, 6)",
        (cid,),
    )
    (lean,) = [m for m in sql.migrations() if m.name == "lean_answer_saves"]
    db.execute(lean.sql)  # idempotent, as every migration
    await store.save_answers(cid, {"q": "new"}, seq=2)
    assert total(db, cid) == (len('"kept"old"new"q'), len('"kept"old"new"q'))


async def test_an_answers_saved_event_for_each_question_s_first_answer_only(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """A coding test saves every few seconds: edits of an answer already saved write no
    event, the rows keep when each answer was saved last."""
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "a", "q2": "b"}, seq=1)
    for seq in range(2, 6):
        await store.save_answers(cid, {"q1": "a" * seq}, seq=seq)
    await store.save_answers(cid, {"q1": "z", "q3": "c"}, seq=6)
    saved = [e.detail for e in await store.events(cid) if e.type == "answers_saved"]
    assert saved == [{"questions": ["q1", "q2"], "seq": 1}, {"questions": ["q3"], "seq": 6}]
    assert (await store.get(cid)).pending_answers == {"q1": "z", "q2": "b", "q3": "c"}


async def test_the_name_checks_state_the_rule_of_invigilator_is_name(
    db: psycopg.Connection[Any],
) -> None:
    """The CHECKs every save, claim or heartbeat meets are the rule inline (migrations 0011,
    0013), made by invigilator_name_sql as invigilator_is_name is, with no lookahead (13-16 µs
    a name in PostgreSQL's regex engine, against 0.5), and the rule is 0005's: the same names
    pass."""
    for table, constraint, column, length in (
        ("test_session_answer", "test_session_answer_question_check", "question", 128),
        ("test_session_page", "test_session_page_id_check", "page_id", 64),
        ("test_session", "test_session_candidate_id_format", "candidate_id::text", 36),
    ):
        # the definition PostgreSQL keeps, against the rule's own text deparsed the same way
        db.execute(f"CREATE TEMP TABLE probe (LIKE {table})")
        db.execute(
            "ALTER TABLE probe ADD CONSTRAINT c CHECK "
            + db.execute("SELECT invigilator_name_sql(%s, %s)", (column, str(length))).fetchone()[0]
        )
        row = db.execute(
            "SELECT pg_get_constraintdef(c.oid), (SELECT pg_get_constraintdef(p.oid)"
            " FROM pg_constraint p WHERE p.conrelid = 'probe'::regclass AND p.conname = 'c')"
            " FROM pg_constraint c WHERE c.conrelid = %s::regclass AND c.conname = %s",
            (table, constraint),
        ).fetchone()
        db.execute("DROP TABLE probe")
        assert row is not None and "(?=" not in row[0], row
        assert row[0].replace("NOT VALID", "").strip() == row[1], row
    names = ["a", "A9", ".", "..", "-", "a.b", "x" * 128, "x" * 129, "", "a b", "é", "ab\n"]
    names += ["\na", "_a_", "q@x+y:z", "....a", "a/b", "a\tb"]
    for name in names:
        row = db.execute(
            "SELECT invigilator_is_name(%s, 128), length(%s) BETWEEN 1 AND 128"
            " AND %s ~ '^[A-Za-z0-9._:@+-]+$' AND %s ~ '[A-Za-z0-9]'",
            (name, name, name, name),
        ).fetchone()
        assert row is not None and row[0] == row[1], name


async def test_retention_removes_the_total_with_the_answers(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q": "typed"}, seq=1)
    await store.complete(cid)
    db.execute(
        "UPDATE test_session SET completed_at = invigilator_plus(completed_at, interval '-40 days')"
        " WHERE candidate_id = %s",
        (cid,),
    )
    await sessions_of(store).purge_ended(timedelta(days=30), 10)
    assert total(db, cid) == (None, None)
