"""SessionStore against real PostgreSQL: each operation's contract, idempotency, concurrency,
lazy expiry on a write (the ending rules themselves: test_endings.py). Time moves by writing
past timestamps."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from invigilator.domain import (
    CandidateNotFound,
    InvalidInput,
    Method,
    PayloadTooLarge,
    SessionAlreadyEnded,
    SessionEnded,
    SessionNotFound,
    Status,
)
from invigilator.store import SessionStore
from support.db import add_candidate, shift_session

minutes = lambda n: timedelta(minutes=n)  # noqa: E731


async def test_start_creates_an_active_session_with_a_deadline(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    session, created = await store.start(cid, duration_minutes=45, planned_sections=["a", "b"])
    assert created
    assert session.status is Status.ACTIVE
    assert session.deadline - session.test_start_time == minutes(45)
    assert session.remaining_seconds == 45 * 60
    assert session.planned_sections == ["a", "b"]
    assert [e.type for e in await store.events(cid)] == ["started"]


async def test_start_again_returns_the_active_session_unchanged(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    first, _ = await store.start(cid, duration_minutes=30)
    again, created = await store.start(cid, duration_minutes=90)
    assert not created
    assert (again.test_start_time, again.test_duration_minutes) == (first.test_start_time, 30)
    assert [e.type for e in await store.events(cid)] == ["started"]


async def test_start_for_an_ended_session_is_refused(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.complete(cid)
    with pytest.raises(SessionAlreadyEnded):
        await store.start(cid)


async def test_start_without_candidate_is_refused_unless_asked_to_create(
    store: SessionStore,
) -> None:
    with pytest.raises(CandidateNotFound):
        await store.start("ghost")
    session, created = await store.start("ghost", create_candidate=True)
    assert created and session.candidate_id == "ghost"


async def test_start_rejects_a_duration_out_of_range(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    with pytest.raises(InvalidInput, match="between 1 and 1440"):
        await store.start(cid, duration_minutes=0)


async def test_candidate_id_longer_than_36_is_a_validation_error(store: SessionStore) -> None:
    with pytest.raises(InvalidInput):
        await store.start("x" * 37, create_candidate=True)


@pytest.mark.not_on_citus(
    "the stamp is the coordinator's clock and server_now the worker's (each node's now() is its"
    " own transaction's start), milliseconds apart"
)
async def test_heartbeat_stamps_times_from_the_database_clock(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    quiet = await store.heartbeat(cid)
    assert quiet.last_heartbeat == quiet.server_now and quiet.last_activity is None
    busy = await store.heartbeat(cid, active=True)
    assert busy.last_activity == busy.server_now


async def test_unknown_session_is_not_found(store: SessionStore) -> None:
    for call in (store.get, store.heartbeat, store.record_activity, store.tab_close):
        with pytest.raises(SessionNotFound):
            await call("nobody")
    with pytest.raises(SessionNotFound):
        await store.save_answers("nobody", {"q": 1}, 1)


async def test_sections_have_set_semantics_and_keep_order(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    for section in ("intro", "sql", "intro", "python", "sql"):
        session = await store.complete_section(cid, section)
    assert session.sections_completed == ["intro", "sql", "python"]
    events = [e for e in await store.events(cid) if e.type == "section_completed"]
    assert [e.detail["section"] for e in events] == ["intro", "sql", "python"]


async def test_sections_outside_the_plan_are_refused(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid, planned_sections=["a", "b"])
    await store.complete_section(cid, "a")
    with pytest.raises(InvalidInput, match="not one of"):
        await store.complete_section(cid, "z")


async def test_answers_merge_and_the_highest_seq_wins(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "first", "q2": "two"}, seq=1)
    newer = await store.save_answers(cid, {"q1": "third"}, seq=3)
    assert newer.applied == ["q1"]
    older = await store.save_answers(cid, {"q1": "second", "q3": "three"}, seq=2)
    assert older.applied == ["q3"] and older.superseded == ["q1"]
    retry = await store.save_answers(cid, {"q1": "third"}, seq=3)
    assert retry.applied == ["q1"]
    stored = await store.get(cid)
    assert stored.pending_answers == {"q1": "third", "q2": "two", "q3": "three"}
    saved = [e.detail for e in await store.events(cid) if e.type == "answers_saved"]
    assert saved[0] == {"questions": ["q1", "q2"], "seq": 1}  # keys only, never contents


async def test_concurrent_saves_of_different_questions_all_survive(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await asyncio.gather(*(store.save_answers(cid, {f"q{i}": i}, seq=i) for i in range(40)))
    session = await store.get(cid)
    assert session.pending_answers == {f"q{i}": i for i in range(40)}


async def test_concurrent_saves_of_one_question_keep_the_highest_seq(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await asyncio.gather(*(store.save_answers(cid, {"q": f"v{i}"}, seq=i) for i in range(30)))
    session = await store.get(cid)
    assert session.pending_answers == {"q": "v29"} and session.answer_seq == {"q": 29}


async def test_an_answer_save_over_the_size_limit_changes_nothing(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "kept"}, seq=1, max_total_bytes=200)
    with pytest.raises(PayloadTooLarge):
        await store.save_answers(cid, {"q2": "x" * 500}, seq=2, max_total_bytes=200)
    session = await store.get(cid)
    assert session.pending_answers == {"q1": "kept"}
    assert [e.type for e in await store.events(cid)].count("answers_saved") == 1


async def test_nul_characters_are_a_validation_error_and_change_nothing(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    with pytest.raises(InvalidInput):
        await store.save_answers(cid, {"q\u0000": "a\u0000b"}, seq=1)
    assert (await store.get(cid)).pending_answers == {}


async def test_first_completion_wins_and_never_moves(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    ended, first = await store.complete(cid)
    assert first and (ended.status, ended.completion_method) == ("completed", "manual")
    again, first_again = await store.complete(cid, Method.ADMIN_TERMINATED, actor="staff")
    assert not first_again
    assert (again.status, again.completion_method, again.completed_at) == (
        "completed",
        "manual",
        ended.completed_at,
    )
    assert [e.type for e in await store.events(cid)] == ["started", "completed"]


async def test_racing_completions_end_the_session_exactly_once(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    results = await asyncio.gather(
        *(
            store.complete(cid, m)
            for m in [Method.MANUAL, Method.ADMIN, Method.ADMIN_TERMINATED] * 4
        )
    )
    winners = [s for s, first in results if first]
    assert len(winners) == 1
    assert {(s.status, s.completion_method, s.completed_at) for s, _ in results} == {
        (winners[0].status, winners[0].completion_method, winners[0].completed_at)
    }
    terminal = [e for e in await store.events(cid) if e.type in ("completed", "abandoned")]
    assert len(terminal) == 1


async def test_writes_to_an_ended_session_are_refused(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.complete_section(cid, "a")
    await store.complete(cid)
    calls = [
        store.heartbeat(cid),
        store.record_activity(cid),
        store.tab_close(cid),
        store.complete_section(cid, "a"),
        store.complete_section(cid, "b"),
        store.save_answers(cid, {"q": 1}, 9),
        store.extend(cid, 10),
        store.record_client_event(cid, "focus_lost"),
    ]
    for call in calls:
        with pytest.raises(SessionEnded) as caught:
            await call
        assert caught.value.code == "session_ended"
        assert caught.value.detail["session_status"] == "completed"


async def test_extension_moves_the_deadline_and_is_logged(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    start, _ = await store.start(cid, duration_minutes=30)
    extended = await store.extend(cid, 15, actor="staff:ops", reason="power cut")
    assert extended.deadline - start.deadline == minutes(15)
    assert extended.test_duration_minutes == 30 and extended.extra_minutes == 15
    (event,) = [e for e in await store.events(cid) if e.type == "time_extended"]
    assert (event.actor, event.detail["minutes"], event.detail["reason"]) == (
        "staff:ops",
        15,
        "power cut",
    )
    with pytest.raises(InvalidInput):
        await store.extend(cid, 2000)


# --- lazy expiry on a write, resume, the sweeper's batch (the endings: test_endings.py) -----


async def test_a_write_after_the_deadline_is_refused_and_ends_the_session_at_its_deadline(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid, duration_minutes=60)
    await store.save_answers(cid, {"q1": "before the bell"}, seq=1)
    shift_session(db, cid, test_start_time=minutes(61), last_heartbeat=minutes(2))
    with pytest.raises(SessionEnded):
        await store.save_answers(cid, {"q1": "too late"}, seq=2)
    session = await store.get(cid)
    assert (session.status, session.completion_method) == ("completed", "timer_expired")
    assert session.completed_at == session.deadline
    assert session.pending_answers == {"q1": "before the bell"}


async def test_a_long_gap_between_heartbeats_logs_resumed_with_its_length(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.heartbeat(cid)
    await store.heartbeat(cid)  # a normal beat: no event
    shift_session(db, cid, last_heartbeat=timedelta(seconds=100))
    await store.heartbeat(cid)
    (resumed,) = [e for e in await store.events(cid) if e.type == "resumed"]
    assert resumed.detail["gap_seconds"] >= 100 and resumed.detail["after_tab_close"] is False


async def test_finalize_due_ends_each_due_session_once(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    due = [add_candidate(db) for _ in range(5)]
    fresh = add_candidate(db)
    for cid in [*due, fresh]:
        await store.start(cid)
        await store.heartbeat(cid)
    for cid in due:
        shift_session(db, cid, test_start_time=minutes(61), last_heartbeat=minutes(1))
    first = await store.finalize_due(limit=3)
    second = await store.finalize_due(limit=3)
    third = await store.finalize_due(limit=3)
    assert (len(first), len(second), third) == (3, 2, [])
    assert {e.candidate_id for e in first + second} == set(due)
    assert all(e.completion_method is Method.TIMER_EXPIRED for e in first + second)
    assert (await store.get(fresh)).status is Status.ACTIVE


async def test_find_active_and_abandoned_follow_the_guides_semantics(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    live, silent = add_candidate(db), add_candidate(db)
    for cid in (live, silent):
        await store.start(cid)
        await store.heartbeat(cid)
    shift_session(db, silent, last_heartbeat=minutes(6))
    assert {s.candidate_id for s in await store.find_active()} == {live, silent}
    assert [s.candidate_id for s in await store.find_abandoned()] == [silent]


async def test_list_sessions_is_keyset_paginated(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    ids = [add_candidate(db) for _ in range(7)]
    for i, cid in enumerate(ids):
        await store.start(cid)
        shift_session(db, cid, test_start_time=minutes(i))
    await store.complete(ids[0])
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_sessions(limit=3, after=after)
        if not page:
            break
        seen += [s.candidate_id for s in page]
        after = (page[-1].test_start_time, page[-1].candidate_id)
    assert seen == ids  # newest start first: ids[0] started 0 minutes ago
    completed = await store.list_sessions(status=Status.COMPLETED)
    assert [s.candidate_id for s in completed] == [ids[0]]
