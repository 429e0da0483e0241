"""The sweeper's control flow with no database: `sweep_once` repeats batches until one comes
back short, a stop is honoured between batches (never inside one), failures are counted and
logged, and `Sweeper.run` keeps going after the database went away. (What a batch finalizes,
and the same flow against PostgreSQL, is in test_sweeper.py and test_endings.py.)

The sessions service is a small stand-in written here for the one method the sweeper uses,
`sweep(batch_size)` (the `Sweeps` protocol). The run loop's tests run on a virtual clock
(support.clock), so "every `interval` seconds" is checked exactly and in no wall-clock time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from invigilator.analytics import RolledUp
from invigilator.domain import DatabaseUnavailable, Ended, Method, SchemaProblem, Status
from invigilator.sweeper import Sweeper, sweep_once
from support.clock import run_virtual

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
METHODS = [Method.TIMER_EXPIRED, Method.HEARTBEAT_TIMEOUT, Method.TIMER_EXPIRED, Method.TAB_CLOSE]


def due_sessions(n: int) -> list[Ended]:
    """`n` sessions due now, in the order a batch would take them (oldest due first)."""
    ended = []
    for i in range(n):
        method = METHODS[i % len(METHODS)]
        status = Status.ABANDONED if method is Method.HEARTBEAT_TIMEOUT else Status.COMPLETED
        ended.append(Ended(f"c{i:03d}", status, method, T0 + timedelta(seconds=i)))
    return ended


@dataclass
class FakeSessions:
    """`sweep` over a list of due sessions. `script` decides a batch's fate, one entry per
    call (then `None`: normal): an exception to raise, or a callable run inside the batch (as
    if while it is in flight). Each call is recorded with its batch size and virtual time."""

    due: list[Ended] = field(default_factory=list)
    script: list[Exception | Callable[[], Any] | None] = field(default_factory=list)
    calls: list[tuple[float, int]] = field(default_factory=list)

    async def sweep(self, batch_size: int) -> list[Ended]:
        self.calls.append((asyncio.get_running_loop().time(), batch_size))
        fate = self.script.pop(0) if self.script else None
        if isinstance(fate, Exception):
            raise fate
        if fate is not None:
            fate()
        await asyncio.sleep(0)  # the batch's round trip (a cancellation lands here: no commit)
        batch, self.due = self.due[:batch_size], self.due[batch_size:]
        return batch

    async def roll_up(self, limit: int) -> RolledUp:
        return RolledUp(0, 0)


# --- sweep_once ------------------------------------------------------------------------------


@pytest.mark.parametrize(("due", "batches"), [(7, [3, 3, 1]), (6, [3, 3, 0]), (0, [0])])
def test_a_pass_takes_bounded_batches_until_one_comes_back_short(
    due: int, batches: list[int]
) -> None:
    sessions = FakeSessions(due_sessions(due))
    seen: list[list[Ended]] = []
    ended = run_virtual(sweep_once(sessions, batch_size=3, on_batch=seen.append))
    assert [size for _, size in sessions.calls] == [3] * len(batches)
    assert [len(b) for b in seen] == [n for n in batches if n]  # each committed batch, not empty
    assert ended == due_sessions(due)  # everything, in order


def test_a_set_stop_ends_the_pass_after_the_batch_in_flight() -> None:
    stop = asyncio.Event()
    sessions = FakeSessions(due_sessions(10), script=[stop.set])  # asked to stop during batch one
    ended = run_virtual(sweep_once(sessions, batch_size=3, stop=stop))
    assert len(sessions.calls) == 1
    assert ended == due_sessions(3)  # that batch is kept whole; no next one began
    assert len(sessions.due) == 7


def test_a_pass_refuses_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        run_virtual(sweep_once(FakeSessions(), batch_size=0))


def test_sweeper_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="interval"):
        Sweeper(FakeSessions(), interval=0, batch_size=500)
    with pytest.raises(ValueError, match="batch_size"):
        Sweeper(FakeSessions(), interval=5.0, batch_size=0)


# --- one pass of a Sweeper: counted, logged, never raising -----------------------------------


def test_a_pass_counts_and_logs_what_it_finalized_by_method(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sweeper = Sweeper(FakeSessions(due_sessions(5)), interval=5.0, batch_size=2)
    with caplog.at_level(logging.DEBUG, logger="invigilator.sweeper"):
        ended = run_virtual(sweeper.sweep())
    assert ended == due_sessions(5)
    assert (sweeper.passes, sweeper.failures) == (1, 0)
    assert sweeper.finalized == {
        Method.TIMER_EXPIRED: 3,
        Method.HEARTBEAT_TIMEOUT: 1,
        Method.TAB_CLOSE: 1,
    }
    messages = [r.getMessage() for r in caplog.records if r.name == "invigilator.sweeper"]
    assert messages[0] == (
        "sweeper finalized 5 session(s): timer_expired=3, tab_close=1, heartbeat_timeout=1"
    )
    assert messages[1:] == [
        f"finalized {e.candidate_id}: {e.status}/{e.completion_method}"
        f" at {e.completed_at.isoformat()}"
        for e in due_sessions(5)
    ]


@pytest.mark.parametrize(
    ("error", "level", "message"),
    [
        (
            DatabaseUnavailable("the database is unavailable; try again shortly"),
            logging.WARNING,
            "sweeper: the database is unavailable; try again shortly (next try in 5s)",
        ),
        (
            SchemaProblem("the schema is not installed: run `invigilator db upgrade`"),
            logging.ERROR,
            "sweeper: the schema is not installed: run `invigilator db upgrade` (next try in 5s)",
        ),
        (RuntimeError("a bug"), logging.ERROR, "sweeper pass failed (next try in 5s)"),
    ],
    ids=["database-unavailable", "domain-error", "anything-else"],
)
def test_a_failed_pass_is_counted_logged_and_keeps_what_was_committed(
    caplog: pytest.LogCaptureFixture, error: Exception, level: int, message: str
) -> None:
    sessions = FakeSessions(due_sessions(5), script=[None, error])  # the second batch fails
    sweeper = Sweeper(sessions, interval=5.0, batch_size=3)
    with caplog.at_level(logging.INFO, logger="invigilator.sweeper"):
        ended = run_virtual(sweeper.sweep())  # never raises
    assert ended == due_sessions(3)  # the first batch was committed: reported, counted
    assert (sweeper.passes, sweeper.failures) == (1, 1)
    assert sum(sweeper.finalized.values()) == 3
    records = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "invigilator.sweeper"
    ]
    assert (level, message) in records
    reported = "sweeper finalized 3 session(s): timer_expired=2, heartbeat_timeout=1"
    assert (logging.INFO, reported) in records
    if isinstance(error, RuntimeError):
        (failed,) = [r for r in caplog.records if r.getMessage() == message]
        assert failed.exc_info is not None and failed.exc_info[1] is error  # the traceback


def test_a_cancelled_pass_still_reports_what_was_committed() -> None:
    async def scenario() -> Sweeper:
        sessions = FakeSessions(due_sessions(5), script=[None, lambda: task.cancel()])
        sweeper = Sweeper(sessions, interval=5.0, batch_size=3)
        task = asyncio.ensure_future(sweeper.sweep())
        with pytest.raises(asyncio.CancelledError):
            await task
        return sweeper

    sweeper = run_virtual(scenario())
    assert sum(sweeper.finalized.values()) == 3


# --- the run loop ----------------------------------------------------------------------------


def test_run_sweeps_every_interval_and_keeps_going_after_the_database_went_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unavailable = DatabaseUnavailable("the database is unavailable; try again shortly")

    async def scenario() -> tuple[Sweeper, FakeSessions]:
        sessions = FakeSessions(script=[unavailable, unavailable])  # the first two passes fail
        sweeper = Sweeper(sessions, interval=5.0, batch_size=10)
        stop = asyncio.Event()
        task = asyncio.ensure_future(sweeper.run(stop))
        await asyncio.sleep(12)  # passes at 0 and 5 fail, 10 finds nothing
        sessions.due = due_sessions(2)
        await asyncio.sleep(5)  # the pass at 15 ends them
        stop.set()
        await task
        return sweeper, sessions

    with caplog.at_level(logging.INFO, logger="invigilator.sweeper"):
        sweeper, sessions = run_virtual(scenario())
    assert [at for at, _ in sessions.calls] == [0.0, 5.0, 10.0, 15.0]
    assert (sweeper.passes, sweeper.failures) == (4, 2)
    assert sweeper.finalized == {Method.TIMER_EXPIRED: 1, Method.HEARTBEAT_TIMEOUT: 1}
    messages = [r.getMessage() for r in caplog.records if r.name == "invigilator.sweeper"]
    assert messages[0] == "sweeper started: every 5s, batches of at most 10"
    warning = "sweeper: the database is unavailable; try again shortly (next try in 5s)"
    assert messages.count(warning) == 2
    assert messages[-1] == (
        "sweeper stopped after 4 pass(es); finalized 2 session(s): "
        "timer_expired=1, heartbeat_timeout=1"
    )


def test_run_stops_between_batches_and_does_not_wait_out_the_interval() -> None:
    async def scenario() -> tuple[Sweeper, FakeSessions, float]:
        stop = asyncio.Event()
        sessions = FakeSessions(due_sessions(25), script=[stop.set])  # stop asked during batch one
        sweeper = Sweeper(sessions, interval=3600.0, batch_size=10)
        await sweeper.run(stop)
        return sweeper, sessions, asyncio.get_running_loop().time()

    sweeper, sessions, stopped_at = run_virtual(scenario())
    assert len(sessions.calls) == 1 and sweeper.passes == 1
    assert sweeper.finalized.total() == 10  # that batch only, kept whole
    assert stopped_at == 0.0  # no pause after it


def test_a_stop_during_the_pause_ends_the_run_at_once() -> None:
    async def scenario() -> tuple[int, float]:
        stop = asyncio.Event()
        sweeper = Sweeper(FakeSessions(), interval=3600.0, batch_size=500)
        task = asyncio.ensure_future(sweeper.run(stop))
        await asyncio.sleep(60)
        stop.set()
        await task
        return sweeper.passes, asyncio.get_running_loop().time()

    assert run_virtual(scenario()) == (1, 60.0)
