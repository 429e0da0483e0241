"""The coalesced heartbeat path: same effects as one-by-one heartbeats, refusals explained,
every acknowledged heartbeat committed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from invigilator.db import connector, migrate
from invigilator.domain import InvalidInput, SessionEnded, SessionNotFound, Status
from invigilator.heartbeats import HeartbeatBatcher
from invigilator.store import SessionStore
from support.db import TEST_POLICY, add_candidate, shift_session


async def test_batch_stamps_every_active_session_in_one_commit(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    ids = [add_candidate(db) for _ in range(20)]
    for cid in ids:
        await store.start(cid)
    clocks = await store.heartbeat_batch({cid: i % 2 == 0 for i, cid in enumerate(ids)})
    assert set(clocks) == set(ids)
    assert all(c.status is Status.ACTIVE and c.remaining_seconds > 0 for c in clocks.values())
    rows = db.execute(
        "SELECT count(DISTINCT last_heartbeat), count(last_activity) FROM test_session"
    ).fetchone()
    assert rows == (1, 10)  # one transaction: one now(); activity only where active


async def test_batch_leaves_out_ended_due_and_unknown_sessions(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    live, ended, overdue = (add_candidate(db) for _ in range(3))
    for cid in (live, ended, overdue):
        await store.start(cid)
    await store.complete(ended)
    shift_session(db, overdue, test_start_time=timedelta(minutes=61), last_heartbeat=timedelta(0))
    clocks = await store.heartbeat_batch(
        {live: False, ended: False, overdue: True, "nobody": False}
    )
    assert set(clocks) == {live}
    status = dict(db.execute("SELECT candidate_id, status FROM test_session").fetchall())
    assert status[overdue] == "active"  # the batch writes nothing to a due session


async def test_batch_clears_tab_close_and_logs_resumed_like_the_single_path(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    reload, gap = add_candidate(db), add_candidate(db)
    for cid in (reload, gap):
        await store.start(cid)
        await store.heartbeat(cid)
    await store.tab_close(reload)
    shift_session(db, gap, last_heartbeat=timedelta(seconds=120))
    await store.heartbeat_batch({reload: False, gap: False})
    assert db.execute("SELECT count(tab_closed_at) FROM test_session").fetchone() == (0,)
    resumed = dict(
        db.execute(
            "SELECT candidate_id, detail FROM test_session_event WHERE type = 'resumed'"
        ).fetchall()
    )
    assert resumed[reload]["after_tab_close"] is True
    assert resumed[gap]["after_tab_close"] is False and resumed[gap]["gap_seconds"] >= 120


async def test_batcher_answers_every_caller_and_explains_refusals(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    ids = [add_candidate(db) for _ in range(60)]
    for cid in ids:
        await store.start(cid)
    ended = ids[-1]
    await store.complete(ended)
    batcher = HeartbeatBatcher(store, max_batch=16)
    calls = [batcher.beat(cid, active=True) for cid in ids[:-1] for _ in range(3)]
    calls += [batcher.beat(ended), batcher.beat("nobody")]
    results = await asyncio.gather(*calls, return_exceptions=True)
    clocks, refusals = results[:-2], results[-2:]
    assert all(not isinstance(c, BaseException) and c.status is Status.ACTIVE for c in clocks)
    assert isinstance(refusals[0], SessionEnded)
    assert isinstance(refusals[1], SessionNotFound)
    assert db.execute(
        "SELECT count(*) FROM test_session WHERE last_heartbeat IS NOT NULL"
    ).fetchone() == (59,)
    await batcher.close()


async def test_batcher_finalizes_a_due_session_through_the_single_path(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    cid = add_candidate(db)
    await store.start(cid)
    shift_session(db, cid, test_start_time=timedelta(minutes=61), last_heartbeat=timedelta(0))
    with pytest.raises(SessionEnded):
        await HeartbeatBatcher(store).beat(cid)
    assert db.execute("SELECT status, completion_method FROM test_session").fetchone() == (
        "completed",
        "timer_expired",
    )


async def test_batch_works_on_a_uuid_keyed_host_table(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE candidate (candidate_id uuid PRIMARY KEY)")
        ids = [uuid.uuid4() for _ in range(3)]
        for cid in ids:
            conn.execute("INSERT INTO candidate VALUES (%s)", (cid,))
    migrate.upgrade(empty_db_url)
    pool = connector.pool_for(empty_db_url, min_size=1, max_size=2)
    async with pool:
        store = SessionStore(pool, TEST_POLICY)
        for cid in ids:
            await store.start(str(cid))
        upper = str(ids[0]).upper()  # the caller's spelling comes back as given
        clocks = await store.heartbeat_batch({upper: True, str(ids[1]): False, "not-a-uuid": True})
        assert set(clocks) == {upper, str(ids[1])}
        with pytest.raises(InvalidInput, match="uuid"):  # a 422 through the API
            await HeartbeatBatcher(store).beat("not-a-uuid")


class _CountingStore(SessionStore):
    """The real store, counting the batches it writes; each write waits until `queued` is set,
    so what queues during a write does not depend on how fast the machine is."""

    batches: list[int]
    queued: asyncio.Event

    async def heartbeat_batch(self, beats: dict[str, bool], conn: Any = None) -> Any:
        self.batches.append(len(beats))
        await self.queued.wait()
        return await super().heartbeat_batch(beats, conn)


@pytest.mark.parametrize(("linger", "expected"), [(0.0, [1, 4]), (5.0, [2, 3])])
async def test_linger_gathers_heartbeats_that_arrive_one_by_one(
    store: SessionStore, db: psycopg.Connection[Any], linger: float, expected: list[int]
) -> None:
    """Heartbeats that arrive in separate turns of the event loop: without a linger the first
    is written alone at once; with one, the idle writer waits for company (as many as its last
    batch held, at least two), not for the whole linger (5 s here: had it waited, all five
    would have been queued by then, one batch). The first batch is taken before any I/O; its
    write is held until all five are queued, so the rest is the next batch on any machine.
    (The timing itself, on a virtual clock: test_heartbeats_unit.py.)"""
    counting = _CountingStore(store.pool, store.policy)
    counting.batches = []
    counting.queued = asyncio.Event()
    ids = [add_candidate(db) for _ in range(5)]
    for cid in ids:
        await store.start(cid)
    batcher = HeartbeatBatcher(counting, linger=linger)
    pending = []
    for cid in ids:
        pending.append(asyncio.ensure_future(batcher.beat(cid)))
        for _ in range(3):  # let the writer run: it takes what is queued, or lingers
            await asyncio.sleep(0)
    counting.queued.set()
    clocks = await asyncio.gather(*pending)
    assert {c.candidate_id for c in clocks} == set(ids)
    assert counting.batches == expected
    await batcher.close()
