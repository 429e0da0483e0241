"""The sweeper against real PostgreSQL: batches, the run loop (stop between batches, a database
that goes away), many sweepers at once, a sweeper killed mid-batch, and EXPLAIN proof that a
pass costs what is live, not what the table holds. What it ends and what it leaves alone is
in test_endings.py, run both through the sweeper and through lazy expiry; its control flow
without a database in test_sweeper_unit.py.

Time moves by writing past timestamps. Where a test must catch a sweeper inside a transaction, a
trigger in the test's own database makes the sweeper wait on an advisory lock the test holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from invigilator import sql
from invigilator.config import Settings
from invigilator.db import connector
from invigilator.domain import Ended, Method
from invigilator.store import SessionStore
from invigilator.sweeper import Sweeper, sweep_once
from support.cli import run_cli, start_cli
from support.db import TEST_POLICY, add_candidate, sessions_of, shift_session
from support.sweeps import (
    TRIPWIRE_LOCK,
    TRIPWIRE_ON_ONE_SERVER,
    add_ended_sessions,
    add_sessions,
    backend_alive,
    backends_waiting,
    inconsistencies,
    install_tripwire,
    remove_tripwire,
    statuses,
    swept_lines,
    terminal_event_count,
)
from support.waiting import eventually, wait_until

minutes = lambda n: timedelta(minutes=n)  # noqa: E731
seconds = lambda n: timedelta(seconds=n)  # noqa: E731

QUERIES = sql.queries()


# --- batches and the run loop --------------------------------------------------------------


async def test_a_pass_repeats_bounded_batches_until_one_comes_back_short(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    due = add_sessions(db, "due-", 7, started_ago=minutes(61), heartbeat_ago=minutes(1))
    add_sessions(db, "live-", 3, started_ago=minutes(10), heartbeat_ago=seconds(5))
    batches: list[list[Ended]] = []
    ended = await sweep_once(sessions_of(store), batch_size=3, on_batch=batches.append)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(e.candidate_id for e in ended) == due
    assert await sweep_once(sessions_of(store), batch_size=3) == []
    with pytest.raises(ValueError, match="batch_size"):
        await sweep_once(sessions_of(store), batch_size=0)


async def test_run_sweeps_each_tick_logs_counts_by_method_and_stops_on_request(
    store: SessionStore, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="invigilator.sweeper")
    add_sessions(db, "late-", 2, started_ago=minutes(61), heartbeat_ago=minutes(1))
    add_sessions(db, "gone-", 1, started_ago=minutes(20), heartbeat_ago=minutes(6))
    cid = add_candidate(db, "q-holder")
    await store.start(cid)
    await store.save_answers(cid, {"q1": "a secret answer"}, seq=1)
    sweeper = Sweeper(sessions_of(store), interval=0.05, batch_size=500)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    await eventually(lambda: sum(sweeper.finalized.values()) == 3, "the first pass")
    shift_session(db, cid, test_start_time=minutes(61), last_heartbeat=minutes(1))  # later tick
    await eventually(lambda: sum(sweeper.finalized.values()) == 4, "a later pass")
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    assert sweeper.finalized == {Method.TIMER_EXPIRED: 3, Method.HEARTBEAT_TIMEOUT: 1}
    messages = [r.getMessage() for r in caplog.records]
    assert "sweeper finalized 3 session(s): timer_expired=2, heartbeat_timeout=1" in messages
    assert "sweeper finalized 1 session(s): timer_expired=1" in messages
    assert any(m.startswith("sweeper stopped after") for m in messages)
    assert not any("secret" in m for m in messages)  # never answer contents


@pytest.mark.not_on_citus(TRIPWIRE_ON_ONE_SERVER)
async def test_run_stops_between_batches_never_inside_one(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    due = add_sessions(
        db, "due-", 25, started_ago=minutes(90), heartbeat_ago=minutes(33), step=seconds(1)
    )
    install_tripwire(db, due[4])  # in the first batch (oldest due first)
    db.execute("SELECT pg_advisory_lock(%s)", (TRIPWIRE_LOCK,))
    sweeper = Sweeper(sessions_of(store), interval=0.05, batch_size=10)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    await eventually(lambda: backends_waiting(db, "advisory"), "the sweeper inside its batch")
    stop.set()  # asked to stop while a batch is in flight
    db.execute("SELECT pg_advisory_unlock(%s)", (TRIPWIRE_LOCK,))
    await asyncio.wait_for(task, timeout=30)
    ended = [cid for cid, (status, _) in statuses(db, due).items() if status != "active"]
    assert sorted(ended) == due[:10]  # that batch committed whole; no next batch began
    assert sweeper.finalized == {Method.TIMER_EXPIRED: 10}
    assert inconsistencies(db) == []


@pytest.mark.not_on_citus(TRIPWIRE_ON_ONE_SERVER)
async def test_run_survives_losing_the_database_mid_batch(
    store: SessionStore, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="invigilator.sweeper")
    due = add_sessions(db, "due-", 3, started_ago=minutes(61), heartbeat_ago=minutes(1))
    install_tripwire(db, due[0])
    db.execute("SELECT pg_advisory_lock(%s)", (TRIPWIRE_LOCK,))
    sweeper = Sweeper(sessions_of(store), interval=0.05, batch_size=500)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    try:
        (pid,) = await eventually(
            lambda: backends_waiting(db, "advisory"), "the sweeper inside its batch"
        )
        # The connection dies under the batch (a restart, a failover, a network cut).
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await eventually(lambda: sweeper.failures == 1, "the pass to fail")
        assert not task.done()  # it lives on
        assert set(statuses(db, due).values()) == {("active", None)}  # nothing half-done
        db.execute("SELECT pg_advisory_unlock(%s)", (TRIPWIRE_LOCK,))
        await eventually(lambda: sweeper.finalized.total() == 3, "a later pass to sweep")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "invigilator.sweeper" and r.levelno == logging.WARNING
    ]
    assert warnings == [
        "sweeper: the database is unavailable; try again shortly (next try in 0.05s)"
    ]
    assert set(statuses(db, due).values()) == {("completed", "timer_expired")}
    assert inconsistencies(db) == []


# --- many sweepers, and one killed mid-batch ------------------------------------------------


async def test_four_sweeper_processes_and_two_in_process_end_each_due_session_once(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    late = add_sessions(db, "late-", 1200, started_ago=minutes(70), heartbeat_ago=minutes(1))
    gone = add_sessions(db, "gone-", 900, started_ago=minutes(20), heartbeat_ago=minutes(9))
    shut = add_sessions(
        db,
        "shut-",
        900,
        started_ago=minutes(20),
        heartbeat_ago=minutes(3),
        tab_closed_ago=minutes(2),
    )
    live = add_sessions(db, "live-", 300, started_ago=minutes(10), heartbeat_ago=seconds(3))
    old = add_ended_sessions(db, "old-", 200)
    due = set(late + gone + shut)
    before_old = db.execute(
        "SELECT candidate_id, updated_at, completed_at FROM test_session "
        "WHERE candidate_id LIKE 'old-%' ORDER BY 1"
    ).fetchall()

    # A barrier: every sweeper blocks on its first batch until all six are waiting.
    barrier = psycopg.connect(db_url)
    barrier.execute("LOCK TABLE test_session IN EXCLUSIVE MODE")
    procs = [start_cli("sweep", "--once", "--batch-size", "100", db_url=db_url) for _ in range(4)]
    pools = [
        connector.pool_for(db_url, Settings(statement_timeout_ms=60_000), min_size=1, max_size=1)
        for _ in range(2)
    ]
    try:
        for pool in pools:
            await pool.open(wait=True)
        tasks = [
            asyncio.create_task(
                sweep_once(sessions_of(SessionStore(pool, TEST_POLICY)), batch_size=100)
            )
            for pool in pools
        ]
        await eventually(
            lambda: len(backends_waiting(db, "relation")) == 6, "six sweepers at the barrier"
        )
        barrier.commit()
        in_process = await asyncio.gather(*tasks)
        outputs = await asyncio.gather(
            *(asyncio.to_thread(p.communicate, timeout=60) for p in procs)
        )
    finally:
        barrier.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
        for pool in pools:
            await pool.close()

    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    reported: list[list[str]] = [[e.candidate_id for e in ended] for ended in in_process]
    for stdout, _ in outputs:
        lines = swept_lines(stdout)
        assert stdout.rstrip().splitlines()[-1].startswith(f"finalized {len(lines)} session(s)")
        reported.append([cid for cid, *_ in lines])
    everything = [cid for ids in reported for cid in ids]
    assert len(everything) == len(set(everything)) == len(due)  # nobody ended twice
    assert set(everything) == due
    assert sum(1 for ids in reported if ids) >= 2  # the work really was shared

    methods = statuses(db, sorted(due | set(live)))
    assert {methods[c] for c in late} == {("completed", "timer_expired")}
    assert {methods[c] for c in gone} == {("abandoned", "heartbeat_timeout")}
    assert {methods[c] for c in shut} == {("completed", "tab_close")}
    assert {methods[c] for c in live} == {("active", None)}
    assert terminal_event_count(db, sorted(due)) == len(due)
    assert terminal_event_count(db, live) == 0
    assert terminal_event_count(db, old) == len(old)  # theirs from before, no new one
    assert inconsistencies(db) == []
    after_old = db.execute(
        "SELECT candidate_id, updated_at, completed_at FROM test_session "
        "WHERE candidate_id LIKE 'old-%' ORDER BY 1"
    ).fetchall()
    assert after_old == before_old


@pytest.mark.not_on_citus(TRIPWIRE_ON_ONE_SERVER)
def test_a_sweeper_killed_mid_batch_leaves_nothing_half_done(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    # 500 due sessions, each due one second after the one before: batches of 200 take them in
    # order, so the tripwire on session 250 stops the sweeper inside its second batch.
    due = add_sessions(
        db, "due-", 500, started_ago=minutes(120), heartbeat_ago=minutes(63), step=seconds(1)
    )
    install_tripwire(db, due[249])
    db.execute("SELECT pg_advisory_lock(%s)", (TRIPWIRE_LOCK,))
    proc = start_cli("sweep", "--once", "--batch-size", "200", db_url=db_url)
    try:
        (pid,) = wait_until(lambda: backends_waiting(db, "advisory"), "the second batch")
        # Inside the second batch: the first is committed, none of the second is visible.
        ended_now = [c for c, (status, _) in statuses(db, due).items() if status != "active"]
        assert sorted(ended_now) == due[:200]
        assert inconsistencies(db) == []
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        db.execute("SELECT pg_advisory_unlock(%s)", (TRIPWIRE_LOCK,))
    assert proc.returncode == -signal.SIGKILL
    # The orphaned transaction ends without a commit: PostgreSQL rolls it back.
    wait_until(lambda: not backend_alive(db, pid), "the killed sweeper's backend to go")
    remove_tripwire(db)

    after_kill = statuses(db, due)
    assert sorted(c for c, (s, _) in after_kill.items() if s != "active") == due[:200]
    assert terminal_event_count(db, due) == 200
    assert inconsistencies(db) == []
    # What it printed before dying is exactly what it had committed.
    assert sorted(cid for cid, *_ in swept_lines(stdout)) == due[:200]

    rerun = run_cli("sweep", "--once", "--batch-size", "200", db_url=db_url)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(cid for cid, *_ in swept_lines(rerun.stdout)) == due[200:]
    assert rerun.stdout.rstrip().splitlines()[-1] == "finalized 300 session(s): timer_expired=300"
    assert set(statuses(db, due).values()) == {("completed", "timer_expired")}
    assert terminal_event_count(db, due) == 500
    assert inconsistencies(db) == []


# --- cost grows with what is live, not with the table ---------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _scans(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[str]:
    """How the query `name` reads test_session: one entry per scan node, e.g.
    "Index Scan/idx_test_session_active"; fails on a sequential scan of the table."""
    row = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES[name], params).fetchone()
    assert row is not None
    raw = row[0]
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    scans = []
    for node in _plan_nodes(plan):
        if node.get("Relation Name") == "test_session" and node["Node Type"] == "Seq Scan":
            raise AssertionError(f"{name} reads the whole table: {json.dumps(plan, indent=1)}")
        if "Index Name" in node:
            scans.append(f"{node['Node Type']}/{node['Index Name']}")
    return scans


@pytest.mark.not_on_citus(
    "EXPLAIN on a coordinator shows the distributed plan, not the shard's (and the 50k rows' "
    "triggers fire on the workers: session_replication_role is not sent there)"
)
def test_the_sweepers_and_the_guides_queries_use_the_live_index_not_the_table(
    db: psycopg.Connection[Any],
) -> None:
    # A table that has run for a while: 50k sessions ended long ago, a thousand running,
    # a handful due.
    skipping_triggers = False
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        # Loading is quicker without per-row triggers (the rows are valid and carry their
        # deadline); only a superuser may skip them, and the test holds either way.
        db.execute("SET session_replication_role = replica")
        skipping_triggers = True
    add_ended_sessions(db, "old-", 50_000, with_events=False)
    if skipping_triggers:
        db.execute("RESET session_replication_role")
    add_sessions(db, "live-", 1000, started_ago=minutes(10), heartbeat_ago=seconds(5))
    add_sessions(db, "due-", 5, started_ago=minutes(61), heartbeat_ago=minutes(1))
    add_sessions(db, "gone-", 3, started_ago=minutes(20), heartbeat_ago=minutes(7))
    db.execute("ANALYZE test_session")
    rules = TEST_POLICY.sql_params()  # what the store passes
    params = {
        "find_due": {**rules, "limit": 500},
        "find_active": {"limit": 1000},
        "find_abandoned": {"silent_for": TEST_POLICY.abandon_after, "limit": 1000},
    }
    for name, p in params.items():
        scans = _scans(db, name, p)
        # The live set is found through the partial index; a join back may use the key.
        assert scans and scans[0].endswith("/idx_test_session_active"), (name, scans)
        assert {s.split("/")[1] for s in scans} <= {"idx_test_session_active", "test_session_pkey"}

    # With almost nothing running PostgreSQL may prefer the guide's status index for the scans
    # that have no deadline bound: its 'active' range is the same live set. Never the table.
    db.execute(
        "UPDATE test_session SET status = 'completed', completion_method = 'manual', "
        "completed_at = now() WHERE candidate_id LIKE 'live-%'"
    )
    db.execute("ANALYZE test_session")
    live_set = {"idx_test_session_active", "idx_test_session_status", "test_session_pkey"}
    for name, p in params.items():
        scans = _scans(db, name, p)
        assert scans and {s.split("/")[1] for s in scans} <= live_set, (name, scans)
    assert _scans(db, "find_active", params["find_active"]) == [
        "Index Scan/idx_test_session_active"
    ]
