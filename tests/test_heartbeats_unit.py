"""HeartbeatBatcher's control flow with no database: the linger, batches that follow each other
in waves, one batch in flight, one retry on a broken connection, refused heartbeats explained
one by one, and close(). (What a batch writes is tested against PostgreSQL in test_heartbeats.py.)

The store is a small stand-in written here for the part of SessionStore's interface the
batcher uses. Every test runs on a virtual clock (support.clock): the linger's timer fires
after exactly its virtual seconds, so `loop.time()` says when a batch was written and no test
depends on how fast or loaded the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from invigilator.domain import Clock, InvigilatorError, SessionEnded, SessionNotFound, Status
from invigilator.heartbeats import HeartbeatBatcher
from support.clock import run_virtual

NOW = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


class Boom(Exception):
    """What a failing write raises in these tests."""


@dataclass
class Connection:
    broken: bool = False


@dataclass
class Batch:
    at: float  # virtual time the write began
    beats: dict[str, bool]
    connection: int  # which connection (1, 2, … in the order they were taken)


@dataclass
class FakeStore:
    """The store's heartbeat interface. A batch write takes `write_seconds` (virtual), waits
    for `gate` when one is set, and raises the next of `failures` (error, connection broken?).
    The batch takes the heartbeats of `live` candidates only; for any other, asked why,
    the store says the session ended (`ended`) or is unknown, or fails (`explain_fails`)."""

    live: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    write_seconds: float = 0.001
    gate: asyncio.Event | None = None
    failures: list[tuple[Exception, bool]] = field(default_factory=list)
    no_connection: Exception | None = None
    explain_fails: dict[str, Exception] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)
    explained: list[str] = field(default_factory=list)
    connections: int = 0
    writing: int = 0
    most_writing: int = 0

    @contextlib.asynccontextmanager
    async def heartbeat_connection(self) -> AsyncIterator[Connection]:
        if self.no_connection is not None:
            raise self.no_connection
        self.connections += 1
        yield Connection()

    async def heartbeat_batch(
        self, beats: dict[str, bool], conn: Connection | None = None
    ) -> dict[str, Clock]:
        assert conn is not None
        loop = asyncio.get_running_loop()
        self.batches.append(Batch(loop.time(), dict(beats), self.connections))
        self.writing += 1
        self.most_writing = max(self.most_writing, self.writing)
        try:
            await asyncio.sleep(self.write_seconds)
            if self.gate is not None:
                await self.gate.wait()
            if self.failures:
                error, broken = self.failures.pop(0)
                conn.broken = broken
                raise error
        finally:
            self.writing -= 1
        return {cid: clock(cid) for cid in beats if cid in self.live}

    async def explain_refused_heartbeat(self, candidate_id: str) -> InvigilatorError:
        self.explained.append(candidate_id)
        await asyncio.sleep(0)  # a round trip of its own
        if candidate_id in self.explain_fails:
            raise self.explain_fails[candidate_id]
        if candidate_id in self.ended:
            return SessionEnded("this test session has ended")
        return SessionNotFound(f"no test session for candidate {candidate_id!r}")


def clock(candidate_id: str) -> Clock:
    return Clock(candidate_id, Status.ACTIVE, NOW + timedelta(minutes=30), NOW)


async def turns(n: int = 3) -> None:
    """Let the other tasks run for `n` turns of the loop (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def one_by_one(batcher: HeartbeatBatcher, ids: list[str]) -> list[Clock]:
    """Heartbeats arriving in separate turns of the loop, as from separate requests."""
    pending = []
    for cid in ids:
        pending.append(asyncio.ensure_future(batcher.beat(cid)))
        await turns()
    return list(await asyncio.gather(*pending))


def names(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --- the linger ------------------------------------------------------------------------------


@pytest.mark.parametrize(("linger", "expected"), [(0.0, [1, 4]), (5.0, [2, 3])])
def test_linger_gathers_heartbeats_that_arrive_one_by_one(
    linger: float, expected: list[int]
) -> None:
    """Without a linger the first is written alone at once; with one, the idle writer waits
    for company (as many as its last batch held, at least two), not for the whole linger."""
    ids = names(5)
    store = FakeStore(live=set(ids))

    async def scenario() -> None:
        batcher = HeartbeatBatcher(store, linger=linger)
        clocks = await one_by_one(batcher, ids)
        assert [c.candidate_id for c in clocks] == ids
        await batcher.close()

    run_virtual(scenario())
    assert [len(b.beats) for b in store.batches] == expected
    assert store.batches[0].at == 0.0  # the linger ended on company, not after 5 s


def test_a_lone_heartbeat_waits_the_whole_linger_then_goes_alone() -> None:
    store = FakeStore(live={"a"})

    async def scenario() -> float:
        batcher = HeartbeatBatcher(store, linger=0.005)
        await batcher.beat("a")
        return asyncio.get_running_loop().time()

    answered = run_virtual(scenario())
    assert [(b.at, b.beats) for b in store.batches] == [(0.005, {"a": False})]
    assert answered == pytest.approx(0.005 + store.write_seconds)  # answered once written


def test_the_linger_waits_for_as_many_as_the_last_batch_held() -> None:
    """After a batch of three, an idle writer lingers until three are queued again (a wave is
    all there long before the linger is over); two are not enough company."""
    store = FakeStore(live=set(names(8)))

    async def scenario() -> None:
        batcher = HeartbeatBatcher(store, linger=5.0)
        await asyncio.gather(*(batcher.beat(c) for c in ["c0", "c1", "c2"]))  # one wave
        await asyncio.sleep(1)  # the writer is idle again
        await one_by_one(batcher, ["c3", "c4", "c5"])  # ends the linger on the third
        await asyncio.sleep(1)
        await one_by_one(batcher, ["c6", "c7"])  # only two: the linger runs out

    run_virtual(scenario())
    assert [sorted(b.beats) for b in store.batches] == [
        ["c0", "c1", "c2"],
        ["c3", "c4", "c5"],
        ["c6", "c7"],
    ]
    first_end = store.write_seconds
    assert store.batches[1].at == pytest.approx(first_end + 1)  # no lingering: company came
    third_start = store.batches[1].at + store.write_seconds + 1
    assert store.batches[2].at == pytest.approx(third_start + 5.0)  # the whole linger


# --- batches and waves -----------------------------------------------------------------------


def test_one_batch_in_flight_and_what_queues_meanwhile_goes_next_on_the_same_connection() -> None:
    ids = names(41)
    store = FakeStore(live=set(ids), gate=asyncio.Event())

    async def scenario() -> None:
        assert store.gate is not None
        batcher = HeartbeatBatcher(store, max_batch=16)
        first = asyncio.ensure_future(batcher.beat(ids[0]))
        await turns()
        rest = [asyncio.ensure_future(batcher.beat(c)) for c in ids[1:]]  # a wave, meanwhile
        await asyncio.sleep(1)
        assert [len(b.beats) for b in store.batches] == [1]  # the wave waits for the batch
        assert not first.done()  # answered only once its batch is written
        store.gate.set()
        await asyncio.gather(first, *rest)

    run_virtual(scenario())
    assert [len(b.beats) for b in store.batches] == [1, 16, 16, 8]  # at most max_batch each
    assert store.most_writing == 1
    assert [b.connection for b in store.batches] == [1, 1, 1, 1]  # one after the other on it
    assert sorted(c for b in store.batches for c in b.beats) == sorted(ids)


def test_two_tabs_of_one_candidate_are_one_write_and_both_are_answered() -> None:
    store = FakeStore(live={"a", "b"})

    async def scenario() -> list[Clock]:
        batcher = HeartbeatBatcher(store)
        return list(
            await asyncio.gather(
                batcher.beat("a"), batcher.beat("a", active=True), batcher.beat("b")
            )
        )

    clocks = run_virtual(scenario())
    assert [c.candidate_id for c in clocks] == ["a", "a", "b"]
    assert [b.beats for b in store.batches] == [{"a": True, "b": False}]  # activity: either tab


# --- failures --------------------------------------------------------------------------------


def test_a_batch_whose_connection_broke_is_written_once_more_on_a_new_one() -> None:
    store = FakeStore(live={"a", "b"}, failures=[(Boom("server closed the connection"), True)])

    async def scenario() -> list[Clock]:
        batcher = HeartbeatBatcher(store)
        return list(await asyncio.gather(batcher.beat("a"), batcher.beat("b")))

    clocks = run_virtual(scenario())
    assert [c.candidate_id for c in clocks] == ["a", "b"]
    assert [(b.beats, b.connection) for b in store.batches] == [
        ({"a": False, "b": False}, 1),
        ({"a": False, "b": False}, 2),
    ]


def test_a_batch_is_retried_only_once_and_then_every_caller_gets_the_error() -> None:
    second = Boom("still down")
    store = FakeStore(live={"a", "b"}, failures=[(Boom("gone"), True), (second, True)])

    async def scenario() -> list[Any]:
        batcher = HeartbeatBatcher(store)
        return list(
            await asyncio.gather(batcher.beat("a"), batcher.beat("b"), return_exceptions=True)
        )

    assert run_virtual(scenario()) == [second, second]
    assert len(store.batches) == 2


def test_a_failure_on_a_sound_connection_is_not_retried() -> None:
    error = Boom("canceling statement due to statement timeout")
    store = FakeStore(live={"a", "b"}, failures=[(error, False)])

    async def scenario() -> list[Any]:
        batcher = HeartbeatBatcher(store)
        failed = await asyncio.gather(batcher.beat("a"), batcher.beat("b"), return_exceptions=True)
        later = await batcher.beat("a")  # the batcher itself carries on
        return [*failed, later.candidate_id]

    assert run_virtual(scenario()) == [error, error, "a"]
    assert len(store.batches) == 2


def test_no_connection_to_be_had_fails_the_batch_without_a_retry() -> None:
    error = Boom("couldn't get a connection after 2.0 sec")
    store = FakeStore(live={"a"}, no_connection=error)

    async def scenario() -> list[Any]:
        batcher = HeartbeatBatcher(store)
        return list(await asyncio.gather(batcher.beat("a"), return_exceptions=True))

    assert run_virtual(scenario()) == [error]
    assert store.batches == []


# --- refusals are explained one by one -------------------------------------------------------


def test_refused_heartbeats_are_explained_one_by_one_and_their_callers_hear_why() -> None:
    store = FakeStore(live={"a", "b"}, ended={"done"})

    async def scenario() -> list[Any]:
        batcher = HeartbeatBatcher(store)
        calls = [batcher.beat("a"), batcher.beat("done", active=True), batcher.beat("nobody")]
        calls.append(batcher.beat("b"))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    a, done, nobody, b = run_virtual(scenario())
    assert (a.candidate_id, b.candidate_id) == ("a", "b")
    assert isinstance(done, SessionEnded)
    assert isinstance(nobody, SessionNotFound)
    assert store.explained == ["done", "nobody"]  # only the refused ones
    assert len(store.batches) == 1


def test_an_unexpected_error_while_explaining_reaches_its_caller_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = Boom("unexpected")
    store = FakeStore(live={"a"}, explain_fails={"odd": error})

    async def scenario() -> list[Any]:
        batcher = HeartbeatBatcher(store)
        return list(
            await asyncio.gather(batcher.beat("odd"), batcher.beat("a"), return_exceptions=True)
        )

    with caplog.at_level(logging.ERROR, logger="invigilator.heartbeats"):
        odd, a = run_virtual(scenario())
    assert odd is error and a.candidate_id == "a"
    logged = [r.getMessage() for r in caplog.records if r.name == "invigilator.heartbeats"]
    assert logged == ["explaining a refused heartbeat failed"]


def test_a_known_refusal_is_not_logged_as_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(explain_fails={"gone": SessionNotFound("no test session")})

    async def scenario() -> list[Any]:
        return list(
            await asyncio.gather(HeartbeatBatcher(store).beat("gone"), return_exceptions=True)
        )

    with caplog.at_level(logging.DEBUG, logger="invigilator.heartbeats"):
        (refused,) = run_virtual(scenario())
    assert isinstance(refused, SessionNotFound)
    assert [r for r in caplog.records if r.name == "invigilator.heartbeats"] == []


# --- close -----------------------------------------------------------------------------------


def test_close_waits_until_every_queued_heartbeat_is_written() -> None:
    ids = names(5)
    store = FakeStore(live=set(ids), ended={"done"}, gate=asyncio.Event())

    async def scenario() -> None:
        assert store.gate is not None
        batcher = HeartbeatBatcher(store)
        pending = [asyncio.ensure_future(batcher.beat(c)) for c in [*ids, "done"]]
        await turns()
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(60)
        assert not closing.done()  # a batch is still being written
        store.gate.set()
        await closing
        assert all(p.done() for p in pending)  # the refused one too, explained
        assert isinstance(pending[-1].exception(), SessionEnded)
        await batcher.close()  # nothing left: returns at once

    run_virtual(scenario())
    assert sorted(c for b in store.batches for c in b.beats) == sorted([*ids, "done"])
