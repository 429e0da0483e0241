"""The ways a session ends on its own, each written once and run both ways it can be noticed:
by lazy expiry (the next read, `SessionStore.get`, ends it) and by the sweeper (`sweep_once`).
Either way the session must end the same: the same status, completion_method and
completed_at, and one terminal event that says so. And what neither way ends: a session whose
tab came back within the grace, or one that ended otherwise.

Time comes from PostgreSQL's now(): a scenario moves time by writing past timestamps into the
database (`shift_session`), never by sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import psycopg
import pytest

from invigilator.domain import AtDeadline, Ended, Method, Policy, Session, Status, TabClosePolicy
from invigilator.store import SessionStore
from invigilator.sweeper import sweep_once
from support.db import TEST_POLICY, add_candidate, sessions_of, shift_session
from support.sweeps import TERMINAL, inconsistencies

minutes = lambda n: timedelta(minutes=n)  # noqa: E731
seconds = lambda n: timedelta(seconds=n)  # noqa: E731

#: Saved before the end in every scenario: an ending keeps what was saved.
ANSWERS = {"q1": "before the bell"}

Step = Callable[[SessionStore, str], Awaitable[Any]]


async def send_heartbeat(store: SessionStore, cid: str) -> None:
    await store.heartbeat(cid)


async def close_the_tab(store: SessionStore, cid: str) -> None:
    closed = await store.tab_close(cid)  # what the beacon does
    assert closed.tab_closed_at is not None


async def extend_by_10(store: SessionStore, cid: str) -> None:
    await store.extend(cid, 10, actor="staff:ops", reason="fire alarm")


async def accommodate_1_5(store: SessionStore, cid: str) -> None:
    await store.set_accommodations(cid, time_multiplier=1.5, extra_minutes=None, actor="staff:ops")


def ago(
    start: timedelta | None = None, beat: timedelta | None = None, tab: timedelta | None = None
) -> dict[str, timedelta]:
    """Where a scenario moves the session's clock: its start, last heartbeat and tab close
    this long before now()."""
    moved = {"test_start_time": start, "last_heartbeat": beat, "tab_closed_at": tab}
    return {column: delta for column, delta in moved.items() if delta is not None}


class Ending(NamedTuple):
    """How a session ends: its status and completion_method, and completed_at as read from
    the stored session."""

    status: Status
    method: Method
    at: Callable[[Session], datetime | None]


def _after_silence(s: Session) -> datetime | None:
    return s.last_heartbeat + minutes(5) if s.last_heartbeat else None


TIMER_AT_DEADLINE = Ending(Status.COMPLETED, Method.TIMER_EXPIRED, lambda s: s.deadline)
TIMER_AT_EXTENDED_DEADLINE = Ending(
    Status.COMPLETED, Method.TIMER_EXPIRED, lambda s: s.test_start_time + minutes(70)
)
TIMER_AS_SILENCE_RUNS_OUT = Ending(Status.COMPLETED, Method.TIMER_EXPIRED, _after_silence)
ABANDONED_AT_DEADLINE = Ending(Status.ABANDONED, Method.TIMER_ABANDONED, lambda s: s.deadline)
ABANDONED_AFTER_LAST_HEARTBEAT = Ending(Status.ABANDONED, Method.HEARTBEAT_TIMEOUT, _after_silence)
ABANDONED_AFTER_START = Ending(
    Status.ABANDONED, Method.HEARTBEAT_TIMEOUT, lambda s: s.test_start_time + minutes(5)
)
SUBMITTED_AS_THE_TAB_CLOSED = Ending(  # the tab closed 9 s after the last heartbeat
    Status.COMPLETED,
    Method.TAB_CLOSE,
    lambda s: s.last_heartbeat + seconds(9) if s.last_heartbeat else None,
)


@dataclass(frozen=True)
class Scenario:
    """A session started for 60 minutes with an answer saved, then `steps`; its clock is
    moved by each of `moves` in turn: after all but the last it must still be running, after
    the last it ends as `ends` says."""

    id: str
    moves: tuple[dict[str, timedelta], ...]
    ends: Ending
    steps: tuple[Step, ...] = (send_heartbeat,)
    policy: Policy = field(default=TEST_POLICY)


SCENARIOS = [
    Scenario("deadline-passed", (ago(minutes(61), beat=minutes(1)),), TIMER_AT_DEADLINE),
    Scenario(
        "silent-with-time-left",
        (ago(minutes(20), beat=minutes(6)),),
        ABANDONED_AFTER_LAST_HEARTBEAT,
    ),
    Scenario(  # the silence began long before the deadline: it decides, not the deadline
        "silence-noticed-after-the-deadline",
        (ago(minutes(90), beat=minutes(80)),),
        ABANDONED_AFTER_LAST_HEARTBEAT,
    ),
    Scenario(  # never sent a heartbeat: the silence counts from the start
        "no-heartbeat-since-start", (ago(minutes(6)),), ABANDONED_AFTER_START, steps=()
    ),
    Scenario(  # silence runs out exactly at the deadline: a tie is not "time left"
        "deadline-ties-with-silence",
        (ago(minutes(70), beat=minutes(15)),),
        TIMER_AS_SILENCE_RUNS_OUT,  # = the deadline (checked for every timer end)
    ),
    Scenario(  # the grace only delays writing the end (a save in flight may still land)
        "deadline-grace",
        (ago(minutes(61), beat=minutes(1)), ago(minutes(63), beat=minutes(3))),
        TIMER_AT_DEADLINE,
        policy=replace(TEST_POLICY, deadline_grace=minutes(2)),
    ),
    Scenario(  # past the original deadline, within the extension; then past that too
        "extension-moves-the-deadline",
        (ago(minutes(65), beat=minutes(1)), ago(minutes(71), beat=minutes(1))),
        TIMER_AT_EXTENDED_DEADLINE,
        steps=(send_heartbeat, extend_by_10),
    ),
    Scenario(  # within the tab-close grace a reload may come; after it, submitted
        "tab-close-then-silence-submits",
        (ago(tab=seconds(61), beat=seconds(70)),),
        SUBMITTED_AS_THE_TAB_CLOSED,
        steps=(send_heartbeat, close_the_tab),
    ),
    Scenario(  # policy `abandon`: time up without a submit is abandoned, with its own method
        "abandon-at-deadline",
        (ago(minutes(59), beat=minutes(1)), ago(minutes(61), beat=minutes(1))),
        ABANDONED_AT_DEADLINE,
        policy=replace(TEST_POLICY, at_deadline=AtDeadline.ABANDON),
    ),
    Scenario(  # policy `grace`: the end waits the grace (a submit may still come), then timer
        "grace-then-timer-expired",
        (ago(minutes(61), beat=minutes(1)), ago(minutes(63), beat=minutes(1))),
        TIMER_AT_DEADLINE,
        policy=replace(TEST_POLICY, at_deadline=AtDeadline.GRACE, grace=minutes(2)),
    ),
    Scenario(  # x1.5: 90 minutes, and the 2-minute grace becomes 3
        "accommodation-scales-time-and-grace",
        (ago(minutes(80), beat=minutes(1)), ago(minutes(93.5), beat=minutes(1))),
        TIMER_AT_DEADLINE,
        steps=(send_heartbeat, accommodate_1_5),
        policy=replace(TEST_POLICY, at_deadline=AtDeadline.GRACE, grace=minutes(2)),
    ),
    Scenario(
        "accommodation-scales-grace-ends-after-it",
        (ago(minutes(92.5), beat=minutes(1)), ago(minutes(93.5), beat=minutes(1))),
        TIMER_AT_DEADLINE,
        steps=(send_heartbeat, accommodate_1_5),
        policy=replace(TEST_POLICY, at_deadline=AtDeadline.GRACE, grace=minutes(2)),
    ),
    Scenario(  # past the tab-close grace, but the policy is ignore: the abandon rule decides
        "tab-close-ignored-left-to-the-abandon-rule",
        (ago(tab=seconds(61), beat=seconds(70)), ago(tab=seconds(350), beat=seconds(360))),
        ABANDONED_AFTER_LAST_HEARTBEAT,
        steps=(send_heartbeat, close_the_tab),
        policy=replace(TEST_POLICY, tab_close_policy=TabClosePolicy.IGNORE),
    ),
]


@dataclass(frozen=True)
class Way:
    """How an ending is noticed: `look` gives it the chance to end the session when nothing
    should (a read; a sweep that must find nothing); `end` notices the end and returns the
    session as stored; `actor` signs the terminal event."""

    id: str
    actor: str
    look: Callable[[SessionStore, str], Awaitable[None]]
    end: Callable[[SessionStore, str], Awaitable[Session]]


async def _read(store: SessionStore, cid: str) -> None:
    await store.get(cid)  # lazy expiry: a read finalizes a due session


async def _read_ends(store: SessionStore, cid: str) -> Session:
    return await store.get(cid)


async def _sweep(store: SessionStore) -> list[Ended]:
    # one pass, as `invigilator sweep --once` runs it: through the service
    return await sweep_once(sessions_of(store), batch_size=500)


async def _sweep_finds_nothing(store: SessionStore, cid: str) -> None:
    assert await _sweep(store) == []


async def _sweep_ends(store: SessionStore, cid: str) -> Session:
    (ended,) = await _sweep(store)
    session = await store.get(cid)
    assert session.completion_method is not None and session.completed_at is not None
    assert ended == Ended(cid, session.status, session.completion_method, session.completed_at)
    assert await _sweep(store) == []  # ended once, never again
    return session


WAYS = [
    Way("lazy-expiry", "system", _read, _read_ends),
    Way("sweeper", "sweeper", _sweep_finds_nothing, _sweep_ends),
]
BOTH_WAYS = pytest.mark.parametrize("way", WAYS, ids=[w.id for w in WAYS])


async def still_running(way: Way, store: SessionStore, cid: str) -> bool:
    await way.look(store, cid)
    return (await store.get(cid)).status is Status.ACTIVE


@BOTH_WAYS
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_a_session_ends_on_its_own_the_same_way_however_it_is_noticed(
    store: SessionStore, db: psycopg.Connection[Any], scenario: Scenario, way: Way
) -> None:
    store = SessionStore(store.pool, scenario.policy)
    cid = add_candidate(db)
    await store.start(cid, duration_minutes=60)
    await store.save_answers(cid, ANSWERS, seq=1)
    for step in scenario.steps:
        await step(store, cid)
    assert await still_running(way, store, cid), "nothing is due yet"
    *not_yet, due = scenario.moves
    for move in not_yet:
        shift_session(db, cid, **move)
        assert await still_running(way, store, cid), move
    shift_session(db, cid, **due)

    session = await way.end(store, cid)

    ending = scenario.ends
    assert (session.status, session.completion_method) == (ending.status, ending.method)
    assert session.completed_at is not None
    assert session.completed_at == ending.at(session)
    if ending.method is Method.TIMER_EXPIRED:
        assert session.completed_at == session.deadline
    assert session.pending_answers == ANSWERS
    assert session.tab_closed_at is None
    (event,) = [e for e in await store.events(cid) if e.type in TERMINAL]
    assert (event.type, event.actor, event.detail["method"]) == (
        ending.status,
        way.actor,
        ending.method,
    )
    assert datetime.fromisoformat(event.detail["ended_at"]) == session.completed_at
    assert inconsistencies(db) == []


# --- what neither way ends --------------------------------------------------------------------


@BOTH_WAYS
async def test_a_reload_within_the_tab_close_grace_keeps_the_session_and_logs_resumed(
    store: SessionStore, db: psycopg.Connection[Any], way: Way
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    await store.heartbeat(cid)
    await store.tab_close(cid)
    shift_session(db, cid, tab_closed_at=seconds(20))
    session = await store.heartbeat(cid)  # the reloaded page's first heartbeat
    assert session.status is Status.ACTIVE and session.tab_closed_at is None
    resumed = [e for e in await store.events(cid) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].detail["after_tab_close"] is True
    shift_session(db, cid, last_heartbeat=seconds(30))
    assert await still_running(way, store, cid)


@BOTH_WAYS
async def test_a_session_that_ended_otherwise_is_left_alone(
    store: SessionStore, db: psycopg.Connection[Any], way: Way
) -> None:
    cid = add_candidate(db, "submitted-early")
    await store.start(cid)
    submitted, _ = await store.complete(cid)
    shift_session(db, cid, test_start_time=minutes(120))  # long past any deadline
    await way.look(store, cid)
    after = await store.get(cid)
    assert (after.completion_method, after.completed_at) == (
        Method.MANUAL,
        submitted.completed_at,
    )
    assert [e.type for e in await store.events(cid)] == ["started", "completed"]
