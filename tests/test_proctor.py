"""Proctor controls against real PostgreSQL, through the service: pause and resume, reopen,
accommodations, and the per-session policy at the deadline (`grace`, `abandon`); their races
with the sweeper and with the candidate's own calls. The endings each policy leads to, run both
through the sweeper and lazy expiry, are scenarios in test_endings.py.

Time moves by writing past timestamps (shift_session), never by sleeping.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from invigilator.domain import (
    AlreadyPaused,
    AtDeadline,
    Method,
    NotPaused,
    SessionEnded,
    SessionNotEnded,
    Status,
    TimeUp,
)
from invigilator.service import Sessions
from invigilator.store import SessionStore
from invigilator.sweeper import sweep_once
from support.db import TEST_POLICY, add_candidate, sessions_of, shift_session
from support.sweeps import (
    TERMINAL,
    TRIPWIRE_ON_ONE_SERVER,
    add_sessions,
    inconsistencies,
    statuses,
)

minutes = lambda n: timedelta(minutes=n)  # noqa: E731
seconds = lambda n: timedelta(seconds=n)  # noqa: E731


def _types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def _started(db: psycopg.Connection[Any], sessions: Sessions, **kwargs: Any) -> str:
    cid = add_candidate(db)
    await sessions.start(cid, actor="staff:ops", **kwargs)
    return cid


def _earlier(db: psycopg.Connection[Any], cid: str, by: timedelta, *columns: str) -> None:
    """Move these timestamps of a session `by` into the past (all of them, together)."""
    # invigilator_plus, not `-`: on Citus an UPDATE takes no STABLE operator over a column.
    sets = ", ".join(f"{c} = invigilator_plus({c}, -%(by)s)" for c in columns)
    db.execute(
        f"UPDATE test_session SET {sets} WHERE candidate_id = %(cid)s", {"by": by, "cid": cid}
    )


# --- pause and resume ------------------------------------------------------------------------


async def test_a_paused_session_ends_by_no_rule_and_keeps_taking_answers(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    cid = await _started(db, sessions)
    await sessions.heartbeat(cid)
    await sessions.tab_close(cid)
    paused = await sessions.pause(cid, actor="staff:ops", reason="fire alarm")
    assert paused.is_paused and paused.remaining_seconds > 59 * 60
    # Long past the deadline, silent, the tab closed long ago: nothing ends it while paused.
    shift_session(
        db,
        cid,
        test_start_time=minutes(200),
        last_heartbeat=minutes(150),
        tab_closed_at=minutes(150),
        paused_at=minutes(151),
    )
    assert await sweep_once(sessions, batch_size=100) == []
    now = await sessions.read(cid)  # lazy expiry finds nothing due either
    assert now.status is Status.ACTIVE and now.is_paused
    # The clock stood still: what was left at the pause is left now; the deadline has moved.
    left = now.deadline - (now.server_now - minutes(151))
    assert abs(now.remaining_seconds - left.total_seconds()) <= 1
    assert now.current_deadline > now.server_now
    saved = await sessions.save_answers(cid, {"q1": "typed before the pause"}, seq=1)
    assert saved.applied == ["q1"] and saved.clock.is_paused
    beat = await sessions.heartbeat(cid)
    assert beat.is_paused and beat.remaining_seconds == now.remaining_seconds
    with pytest.raises(AlreadyPaused):
        await sessions.pause(cid, actor="staff:ops")
    events = await sessions.timeline(cid)
    (pause,) = [e for e in events if e.type == "paused"]
    assert (pause.actor, pause.detail["reason"]) == ("staff:ops", "fire alarm")


async def test_a_resume_after_the_original_deadline_gives_back_the_time_left(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    cid = await _started(db, sessions, duration_minutes=60)
    await sessions.pause(cid, actor="staff:ops", reason="power cut")
    # Paused 40 minutes in, for 30 minutes: the original deadline passed 10 minutes ago.
    shift_session(
        db, cid, test_start_time=minutes(70), last_heartbeat=minutes(31), paused_at=minutes(30)
    )
    resumed = await sessions.resume(cid, actor="staff:lead", reason="power back")
    assert resumed.status is Status.ACTIVE and not resumed.is_paused
    assert abs(resumed.remaining_seconds - 20 * 60) <= 2
    assert abs(resumed.paused_seconds - 30 * 60) <= 2
    assert resumed.deadline == resumed.test_start_time + minutes(60) + seconds(
        resumed.paused_seconds
    )
    # Silence counts from the resume, not from the heartbeat before the pause.
    assert await sweep_once(sessions, batch_size=100) == []
    shift_session(db, cid, resumed_at=minutes(4))
    assert (await sessions.read(cid)).status is Status.ACTIVE
    shift_session(db, cid, resumed_at=minutes(6))
    ended = await sessions.read(cid)
    assert (ended.status, ended.completion_method) == (Status.ABANDONED, Method.HEARTBEAT_TIMEOUT)
    with pytest.raises(SessionEnded):
        await sessions.resume(cid, actor="staff:lead")
    events = await sessions.timeline(cid)
    assert [t for t in _types(events) if t in ("paused", "pause_ended", *TERMINAL)] == [
        "paused",
        "pause_ended",
        "abandoned",
    ]
    (ended_pause,) = [e for e in events if e.type == "pause_ended"]
    assert ended_pause.actor == "staff:lead" and ended_pause.detail["reason"] == "power back"
    assert inconsistencies(db) == []


async def test_resume_of_a_running_session_is_refused(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    cid = await _started(db, sessions)
    with pytest.raises(NotPaused):
        await sessions.resume(cid, actor="staff:ops")


async def test_pause_racing_the_deadline_and_four_sweepers_each_session_once(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """Staff pause 60 sessions while four sweepers run: the 30 already due end (once each) and
    refuse the pause; the 30 with time left are paused and then outlive any deadline."""
    due = add_sessions(db, "due-", 30, started_ago=minutes(61), heartbeat_ago=seconds(30))
    live = add_sessions(db, "live-", 30, started_ago=minutes(59), heartbeat_ago=seconds(30))
    sessions = sessions_of(store)

    async def pause(cid: str) -> str:
        try:
            await sessions.pause(cid, actor="staff:ops", reason="incident")
        except SessionEnded:
            return "ended"
        return "paused"

    async def sweeper() -> int:
        return len(await sweep_once(sessions, batch_size=7))

    ids = [cid for pair in zip(due, live, strict=True) for cid in pair]
    results = await asyncio.gather(
        *(sweeper() for _ in range(2)),
        *(pause(cid) for cid in ids),
        *(sweeper() for _ in range(2)),
    )
    outcomes = dict(zip(ids, results[2:-2], strict=True))
    assert {outcomes[cid] for cid in due} == {"ended"}
    assert {outcomes[cid] for cid in live} == {"paused"}
    assert set(statuses(db, due).values()) == {("completed", "timer_expired")}
    assert set(statuses(db, live).values()) == {("active", None)}
    # Every due session ended once, by a sweeper or by the pause's lazy expiry.
    assert sum(results[:2]) + sum(results[-2:]) <= len(due)
    assert inconsistencies(db) == []
    # Hours later, silent: still paused, nothing due.
    db.execute(
        "UPDATE test_session SET test_start_time = now() - interval '5 hours', "
        "last_heartbeat = now() - interval '4 hours' WHERE candidate_id LIKE 'live-%'"
    )
    swept = await asyncio.gather(*(sweeper() for _ in range(4)))
    assert swept == [0, 0, 0, 0]
    assert set(statuses(db, live).values()) == {("active", None)}
    paused_events = db.execute(
        "SELECT count(*) FROM test_session_event WHERE type = 'paused'"
    ).fetchone()
    assert paused_events == (len(live),)


@pytest.mark.not_on_citus(TRIPWIRE_ON_ONE_SERVER)
async def test_a_pause_waits_for_a_sweeper_that_holds_the_row_and_sees_its_end(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    from support.sweeps import TRIPWIRE_LOCK, backends_waiting, install_tripwire, remove_tripwire
    from support.waiting import eventually

    sessions = sessions_of(store)
    cid = await _started(db, sessions)
    shift_session(db, cid, test_start_time=minutes(61), last_heartbeat=minutes(1))
    install_tripwire(db, cid)
    db.execute("SELECT pg_advisory_lock(%s)", (TRIPWIRE_LOCK,))
    sweep = asyncio.create_task(sweep_once(sessions, batch_size=10))
    await eventually(lambda: backends_waiting(db, "advisory"), "the sweeper inside its batch")
    pause = asyncio.create_task(sessions.pause(cid, actor="staff:ops"))
    await eventually(lambda: backends_waiting(db, "transactionid"), "the pause on the row lock")
    db.execute("SELECT pg_advisory_unlock(%s)", (TRIPWIRE_LOCK,))
    assert len(await sweep) == 1
    with pytest.raises(SessionEnded):
        await pause
    remove_tripwire(db)
    assert statuses(db, [cid]) == {cid: ("completed", "timer_expired")}
    assert "paused" not in _types(await sessions.timeline(cid))
    assert inconsistencies(db) == []


# --- reopen ----------------------------------------------------------------------------------


async def test_a_reopened_session_waits_for_its_page_then_runs_its_minutes_and_ends_once(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    cid = await _started(db, sessions, duration_minutes=30)
    await sessions.save_answers(cid, {"q1": "first"}, seq=1)
    shift_session(db, cid, test_start_time=minutes(31), last_heartbeat=minutes(1))
    first = await sessions.read(cid)
    assert first.completion_method is Method.TIMER_EXPIRED
    with pytest.raises(SessionNotEnded):
        await sessions.reopen(await _started(db, sessions), 10, actor="staff:ops")

    reopened = await sessions.reopen(cid, 10, actor="staff:ops", reason="network outage")
    assert reopened.status is Status.ACTIVE and reopened.awaiting_candidate and reopened.is_paused
    assert reopened.remaining_seconds == 600 and reopened.reopen_count == 1
    # An hour later the page comes back: the ten minutes start now, not at the reopen.
    _earlier(db, cid, minutes(60), "test_start_time", "paused_at", "reopened_at")
    assert await sweep_once(sessions, batch_size=10) == []
    clock = await sessions.heartbeat(cid)
    assert not clock.is_paused and 598 <= clock.remaining_seconds <= 600
    running = await sessions.read(cid)
    assert not running.awaiting_candidate and running.pending_answers == {"q1": "first"}
    await sessions.save_answers(cid, {"q2": "second"}, seq=2)
    # The new opening ends by the timer once, as the first did.
    _earlier(db, cid, minutes(11), "test_start_time", "resumed_at")
    shift_session(db, cid, last_heartbeat=minutes(1))
    (ended,) = await sweep_once(sessions, batch_size=10)
    assert (ended.candidate_id, ended.completion_method) == (cid, Method.TIMER_EXPIRED)
    assert await sweep_once(sessions, batch_size=10) == []
    events = await sessions.timeline(cid)
    assert [t for t in _types(events) if t in ("reopened", "clock_started", *TERMINAL)] == [
        "completed",
        "reopened",
        "clock_started",
        "completed",
    ]
    (reopen,) = [e for e in events if e.type == "reopened"]
    assert reopen.actor == "staff:ops" and reopen.detail["reason"] == "network outage"
    assert reopen.detail["previous_method"] == "timer_expired" and reopen.detail["minutes"] == 10
    assert inconsistencies(db) == []


async def test_a_reopen_racing_a_repeated_complete_never_ends_the_new_opening(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """The page's submit is retried (its first answer was lost) just as staff reopen: in
    either order the earlier opening ended once, and the new one stays open for its page."""
    sessions = sessions_of(store)
    ids = [await _started(db, sessions) for _ in range(12)]
    for cid in ids:
        await sessions.complete(cid)

    async def repeat(cid: str) -> tuple[bool, Status]:
        session, ended_now = await sessions.complete(cid)
        return ended_now, session.status

    results = await asyncio.gather(
        *(
            call
            for i, cid in enumerate(ids)
            for call in (
                (repeat(cid), sessions.reopen(cid, 15, actor="staff:ops"))
                if i % 2
                else (sessions.reopen(cid, 15, actor="staff:ops"), repeat(cid))
            )
        )
    )
    repeats = [r for r in results if isinstance(r, tuple)]
    assert all(not ended_now for ended_now, _ in repeats)
    for cid in ids:
        session = await sessions.read(cid)
        assert session.status is Status.ACTIVE and session.awaiting_candidate
        types = _types(await sessions.timeline(cid))
        assert [t for t in types if t in ("reopened", *TERMINAL)] == ["completed", "reopened"]
    # The page is back and submits: the new opening ends, once.
    for cid in ids:
        await sessions.heartbeat(cid)
        session, ended_now = await sessions.complete(cid)
        assert ended_now and session.completion_method is Method.MANUAL
        assert not (await sessions.complete(cid))[1]
    assert inconsistencies(db) == []


# --- policy at the deadline and accommodations ----------------------------------------------


async def test_grace_refuses_a_save_and_accepts_the_submit(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    cid = await _started(db, sessions, at_deadline=AtDeadline.GRACE, grace_seconds=120)
    await sessions.save_answers(cid, {"q1": "in time"}, seq=1)
    shift_session(db, cid, test_start_time=minutes(61), last_heartbeat=seconds(10))
    with pytest.raises(TimeUp):
        await sessions.save_answers(cid, {"q1": "too late"}, seq=2)
    with pytest.raises(TimeUp):
        await sessions.complete_section(cid, "part-1")
    clock = await sessions.heartbeat(cid)  # the page may still beat: it shows "submit now"
    assert clock.status is Status.ACTIVE and clock.remaining_seconds == 0
    session, ended_now = await sessions.complete(cid)
    assert ended_now and (session.status, session.completion_method) == (
        Status.COMPLETED,
        Method.MANUAL,
    )
    assert session.pending_answers == {"q1": "in time"}
    assert session.policy.at_deadline is AtDeadline.GRACE and session.policy.grace_seconds == 120


async def test_the_stored_policy_is_the_sessions_own_and_shown_in_its_timeline(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    given = await _started(
        db,
        sessions,
        abandon_after_seconds=60,
        tab_close=None,
        at_deadline=AtDeadline.ABANDON,
        time_multiplier=1.25,
        extra_minutes=5,
    )
    # The deployment's policy changes later: the session keeps its own.
    later = Sessions(
        SessionStore(store.pool, replace(TEST_POLICY, abandon_after=minutes(30))), sessions.limits
    )
    session = await later.read(given)
    assert session.policy.abandon_after_seconds == 60
    assert session.policy.at_deadline is AtDeadline.ABANDON
    assert session.policy.tab_close is TEST_POLICY.tab_close_policy  # from the settings
    assert session.deadline == session.test_start_time + minutes(60 * 1.25 + 5)
    shift_session(db, given, last_heartbeat=seconds(61))
    ended = await later.read(given)
    assert ended.completion_method is Method.HEARTBEAT_TIMEOUT
    (started,) = [e for e in await later.timeline(given) if e.type == "started"]
    assert started.detail["policy"] == {
        "abandon_after_seconds": 60,
        "tab_close": "submit",
        "at_deadline": "abandon",
        "grace_seconds": 300,
        "pages": "single",
    }
    assert started.detail["accommodations"] == {"time_multiplier": 1.25, "extra_minutes": 5}


async def test_accommodations_change_while_running_and_stack_with_extensions(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    sessions = sessions_of(store)
    cid = await _started(db, sessions, duration_minutes=40)
    await sessions.extend(cid, 10, actor="staff:ops", reason="late start")
    changed = await sessions.set_accommodations(
        cid, actor="staff:ops", time_multiplier=1.5, reason="letter on file"
    )
    assert changed.deadline == changed.test_start_time + minutes(40 * 1.5 + 10)
    changed = await sessions.set_accommodations(cid, actor="staff:ops", extra_minutes=15)
    assert changed.accommodations.time_multiplier == 1.5
    assert changed.deadline == changed.test_start_time + minutes(40 * 1.5 + 10 + 15)
    events = [e for e in await sessions.timeline(cid) if e.type == "accommodations_changed"]
    assert [(e.detail["time_multiplier"], e.detail["extra_minutes"]) for e in events] == [
        (1.5, 0),
        (1.5, 15),
    ]
    assert events[0].detail["reason"] == "letter on file" and events[0].actor == "staff:ops"
    await sessions.complete(cid)
    with pytest.raises(SessionEnded):
        await sessions.set_accommodations(cid, actor="staff:ops", extra_minutes=1)
