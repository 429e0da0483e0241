"""Property-based tests (hypothesis) on a real database.

- The state machine: no sequence of operations (heartbeats, saves, sections, completion, staff
  ending and extending, tab closes, client events, time passing, sweeps, reads) reaches a row
  that breaks the rules of docs/schema.md, or changes a session once it has ended.
- The answer merge: for any set of saves applied in any order, one by one or all at once, each
  question ends with the value of the highest `seq` that carried it.

The database is shared by the examples of a test, so each example starts by deleting every
candidate (which cascades to sessions and events)."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from invigilator.domain import (
    InvalidInput,
    Method,
    SessionEnded,
    Status,
)
from invigilator.store import SessionStore
from support.db import add_candidate

CID = "prop-candidate"
QUESTIONS = ["q1", "q2", "q3", "q4"]
SECTIONS = ["s1", "s2", "s3"]
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

OPERATIONS = st.one_of(
    st.tuples(st.just("heartbeat"), st.booleans()),
    st.tuples(st.just("heartbeat_batch"), st.booleans()),
    st.tuples(st.just("activity")),
    st.tuples(
        st.just("save"),
        st.dictionaries(st.sampled_from(QUESTIONS), st.integers(0, 99), min_size=1),
        st.integers(0, 12),
    ),
    st.tuples(st.just("section"), st.sampled_from([*SECTIONS, "unplanned"])),
    st.tuples(st.just("complete")),
    st.tuples(st.just("end"), st.sampled_from([Method.ADMIN, Method.ADMIN_TERMINATED])),
    st.tuples(st.just("extend"), st.sampled_from([1, 5, 30, 1500])),
    st.tuples(st.just("tab_close")),
    st.tuples(st.just("event")),
    # Time passes: every timestamp of a running session moves this many seconds back
    # (listed twice: time matters to most rules).
    st.tuples(st.just("pass"), st.sampled_from([10, 45, 70, 200, 330, 900, 3600])),
    st.tuples(st.just("pass"), st.sampled_from([30, 65, 310, 4000])),
    st.tuples(st.just("finalize")),
    st.tuples(st.just("get")),
)


ENDED_BY: set[str] = set()  # the endings the examples reached


def reset(db: psycopg.Connection[Any]) -> None:
    db.execute("DELETE FROM candidate")  # cascades to test_session and its events


def fetch(db: psycopg.Connection[Any]) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT t.*, now() AS now,"
            " (SELECT count(*) FROM test_session_event e WHERE e.candidate_id = t.candidate_id)"
            "   AS events,"
            " (SELECT count(*) FROM test_session_event e WHERE e.candidate_id = t.candidate_id"
            "   AND e.type IN ('completed', 'abandoned')) AS terminal_events,"
            " test_session_status_of(t.completion_method) AS status_of_method,"
            # every committed answer, from its rows (pending_answers mirrors them: docs/schema.md)
            " (SELECT coalesce(jsonb_object_agg(x.question, x.value), '{}'::jsonb)"
            "    FROM test_session_answer x WHERE x.candidate_id = t.candidate_id)"
            "   AS pending_answers,"
            " (SELECT coalesce(jsonb_object_agg(x.question, x.seq), '{}'::jsonb)"
            "    FROM test_session_answer x WHERE x.candidate_id = t.candidate_id) AS answer_seq"
            " FROM test_session t WHERE t.candidate_id = %s",
            (CID,),
        ).fetchone()
    assert row is not None
    return row


def check_rules(row: dict[str, Any], abandon_after: timedelta) -> None:
    """The row obeys docs/schema.md and the rules of docs/architecture.md."""
    status = Status(row["status"])
    method = Method(row["completion_method"]) if row["completion_method"] else None
    minutes = row["test_duration_minutes"] + row["extra_minutes"]
    assert row["deadline"] == row["test_start_time"] + timedelta(minutes=minutes)
    assert 0 <= row["extra_minutes"] <= 1440
    sections = row["sections_completed"]
    assert len(sections) == len(set(sections))
    if row["planned_sections"] is not None:
        assert set(sections) <= set(row["planned_sections"])
    assert set(row["pending_answers"]) == set(row["answer_seq"])
    if status is Status.ACTIVE:
        assert method is None and row["completed_at"] is None
        assert row["terminal_events"] == 0
        return
    assert method is not None and row["status_of_method"] == status.value
    ended = row["completed_at"]
    assert ended is not None and row["test_start_time"] <= ended <= row["deadline"]
    assert ended <= row["now"]
    assert row["tab_closed_at"] is None
    assert row["terminal_events"] == 1  # ended exactly once
    if method is Method.TIMER_EXPIRED:
        assert ended == row["deadline"]
    if method is Method.HEARTBEAT_TIMEOUT:
        assert ended == (row["last_heartbeat"] or row["test_start_time"]) + abandon_after


async def apply(
    store: SessionStore, db: psycopg.Connection[Any], op: tuple[Any, ...]
) -> tuple[str, Any]:
    """Run one operation; ('ok', result) or ('refused', exception) for an expected refusal."""
    name = op[0]
    try:
        if name == "heartbeat":
            result: Any = await store.heartbeat(CID, active=op[1])
        elif name == "heartbeat_batch":
            result = await store.heartbeat_batch({CID: op[1]})
        elif name == "activity":
            result = await store.record_activity(CID)
        elif name == "save":
            result = await store.save_answers(CID, op[1], op[2])
        elif name == "section":
            result = await store.complete_section(CID, op[1])
        elif name == "complete":
            result = await store.complete(CID)
        elif name == "end":
            result = await store.complete(CID, op[1], actor="staff:test")
        elif name == "extend":
            result = await store.extend(CID, op[1])
        elif name == "tab_close":
            result = await store.tab_close(CID)
        elif name == "event":
            result = await store.record_client_event(CID, "focus_lost")
        elif name == "pass":
            result = db.execute(  # invigilator_plus: Citus takes no STABLE `-` in an UPDATE
                "UPDATE test_session SET"
                " test_start_time"
                "   = invigilator_plus(test_start_time, make_interval(secs => -%(s)s)),"
                " last_heartbeat = invigilator_plus(last_heartbeat, make_interval(secs => -%(s)s)),"
                " last_activity = invigilator_plus(last_activity, make_interval(secs => -%(s)s)),"
                " tab_closed_at = invigilator_plus(tab_closed_at, make_interval(secs => -%(s)s))"
                " WHERE candidate_id = %(cid)s AND status = 'active'",
                {"s": op[1], "cid": CID},
            ).rowcount
        elif name == "finalize":
            result = await store.finalize_due(500)
        else:
            result = await store.get(CID)
    except (SessionEnded, InvalidInput) as exc:
        return "refused", exc
    return "ok", result


#: After an ending, everything that could try to change it.
AFTER_THE_END = [
    ("save", {"q1": 5}, 12),
    ("heartbeat", True),
    ("heartbeat_batch", False),
    ("section", "s1"),
    ("extend", 5),
    ("tab_close",),
    ("event",),
    ("complete",),
    ("end", Method.ADMIN_TERMINATED),
    ("pass", 3600),
    ("finalize",),
]
#: Every ending of the status/method table (docs/architecture.md), reached in every run, then
#: hammered.
ENDINGS = {
    "manual": (60, [("save", {"q1": 1}, 1), ("complete",)]),
    "admin": (60, [("end", Method.ADMIN)]),
    "admin_terminated": (60, [("end", Method.ADMIN_TERMINATED)]),
    "timer_expired": (1, [("heartbeat", False), ("pass", 70), ("get",)]),
    "heartbeat_timeout": (60, [("heartbeat", True), ("pass", 330), ("finalize",)]),
    "tab_close": (60, [("heartbeat", False), ("tab_close",), ("pass", 65), ("finalize",)]),
}


def with_endings(test: Any) -> Any:
    for duration, operations in ENDINGS.values():
        test = example(planned=True, duration=duration, operations=operations + AFTER_THE_END)(test)
    return test


@given(
    planned=st.booleans(),
    duration=st.sampled_from([1, 10, 60]),
    operations=st.lists(OPERATIONS, min_size=1, max_size=14),
)
@with_endings
@EXAMPLES
async def test_no_operation_sequence_breaks_the_rules_or_changes_an_ended_session(
    store: SessionStore,
    db: psycopg.Connection[Any],
    planned: bool,
    duration: int,
    operations: list[tuple[Any, ...]],
) -> None:
    reset(db)
    add_candidate(db, CID)
    await store.start(
        CID, duration_minutes=duration, planned_sections=SECTIONS if planned else None
    )
    abandon_after = store.policy.abandon_after
    expected: dict[str, tuple[int, Any]] = {}  # question -> (seq, value): the merge model
    ended_row: dict[str, Any] | None = None
    for op in operations:
        before = fetch(db)
        outcome, result = await apply(store, db, op)
        row = fetch(db)
        check_rules(row, abandon_after)
        if ended_row is not None:  # an ended session never changes again
            assert {k: v for k, v in row.items() if k != "now"} == ended_row, op
        if outcome == "refused":
            if isinstance(result, SessionEnded):
                assert row["status"] != "active", op
            else:  # a refused input changes nothing
                assert row["status"] == "active", op
                assert {k: v for k, v in row.items() if k != "now"} == {
                    k: v for k, v in before.items() if k != "now"
                }, op
        elif op[0] == "save":
            for question, value in op[1].items():
                if expected.get(question, (-1, None))[0] <= op[2]:
                    expected[question] = (op[2], value)
        elif op[0] == "heartbeat_batch" and CID not in result:
            assert (await store.get(CID)).status is not Status.ACTIVE  # refused: it had ended
        assert row["pending_answers"] == {q: v for q, (_, v) in expected.items()}
        assert row["answer_seq"] == {q: s for q, (s, _) in expected.items()}
        if row["status"] != "active" and ended_row is None:
            ended_row = {k: v for k, v in row.items() if k != "now"}
            event(f"ended: {row['completion_method']}")  # coverage, in --hypothesis-show-statistics
            ENDED_BY.add(row["completion_method"])


def test_every_ending_was_reached() -> None:
    """The state machine above reached every ending (its explicit examples see to it)."""
    if not ENDED_BY:
        pytest.skip("run together with the state machine test")
    assert set(ENDINGS) <= ENDED_BY


SAVES = st.lists(
    st.tuples(st.sets(st.sampled_from(QUESTIONS), min_size=1), st.integers(0, 10_000)),
    min_size=1,
    max_size=10,
    unique_by=lambda save: save[1],  # a browser never reuses a seq
)


@given(saves=SAVES, at_once=st.booleans(), seed=st.integers(0, 2**32 - 1))
@EXAMPLES
async def test_the_highest_seq_wins_in_any_interleaving(
    store: SessionStore,
    db: psycopg.Connection[Any],
    saves: list[tuple[set[str], int]],
    at_once: bool,
    seed: int,
) -> None:
    reset(db)
    add_candidate(db, CID)
    await store.start(CID)
    order = list(saves)
    random.Random(seed).shuffle(order)
    calls = [
        store.save_answers(CID, {q: f"{q}@{seq}" for q in sorted(qs)}, seq) for qs, seq in order
    ]
    if at_once:  # concurrent transactions: the row lock serialises them in some order
        await asyncio.gather(*calls)
    else:
        for call in calls:
            await call
    session = await store.get(CID)
    for question in QUESTIONS:
        seqs = [seq for qs, seq in saves if question in qs]
        if seqs:
            assert session.pending_answers[question] == f"{question}@{max(seqs)}"
            assert session.answer_seq[question] == max(seqs)
        else:
            assert question not in session.pending_answers
