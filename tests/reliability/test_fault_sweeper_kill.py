"""A sweeper killed mid-pass leaves no session half-finalized, and the next pass completes the
work. The sweeper's batch is one statement in one transaction (`finalize_due`): the kill lands
after the statement ran and before the commit, the worst moment there is."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta
from typing import Any

import psycopg
from faults import report

from invigilator.store import SessionStore
from support.db import CITUS_WORKERS, add_candidate, shift_session
from support.waiting import eventually

SESSIONS = 40

KILLED_SWEEPER = """
import sys, time, psycopg
from invigilator import sql
from invigilator.config import Settings
rules = Settings().policy().sql_params()
with psycopg.connect(sys.argv[1], application_name="killed-sweeper") as conn:
    # What a sweeper's batch runs (SessionStore.finalize_due): its pick (unlocked on Citus,
    # argv[2]), then the ending.
    pick = "find_due_unlocked" if sys.argv[2] == "citus" else "find_due"
    ids = [r[0] for r in conn.execute(sql.queries()[pick], {**rules, "limit": 500})]
    cur = conn.execute(
        sql.queries()["finalize"], {**rules, "candidate_ids": ids, "actor": "sweeper"}
    )
    print(len(cur.fetchall()), flush=True)  # the batch is written, not yet committed
    time.sleep(60)
"""


def _counts(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    # Two statements: Citus pushes no subquery down beside an aggregate's target list.
    row = db.execute(
        "SELECT count(*) FILTER (WHERE status = 'active'),"
        "       count(*) FILTER (WHERE status <> 'active')"
        "  FROM test_session"
    ).fetchone()
    ended = db.execute(
        "SELECT count(*) FROM test_session_event WHERE type IN ('completed', 'abandoned')"
    ).fetchone()
    assert row is not None and ended is not None
    return (*row, ended[0])


async def test_a_sweeper_killed_mid_batch_leaves_nothing_half_done(
    store: SessionStore, db: psycopg.Connection[Any], db_url: str
) -> None:
    for _ in range(SESSIONS):
        cid = add_candidate(db)
        await store.start(cid, duration_minutes=30)
        shift_session(  # due: the timer expired a minute ago, the browser was alive till then
            db, cid, test_start_time=timedelta(minutes=31), last_heartbeat=timedelta(minutes=1)
        )
    sweeper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_SWEEPER,
        db_url,
        "citus" if CITUS_WORKERS else "plain",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert sweeper.stdout is not None
        line = await asyncio.wait_for(sweeper.stdout.readline(), timeout=20)
        assert line.decode().strip() == str(SESSIONS)  # it ended them all…
        sweeper.send_signal(signal.SIGKILL)  # …and died before COMMIT
        assert await asyncio.wait_for(sweeper.wait(), timeout=10) == -signal.SIGKILL
    finally:
        if sweeper.returncode is None:
            sweeper.kill()
            await sweeper.wait()
    await eventually(  # the server notices the dead client and rolls back
        lambda: (
            db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'killed-sweeper'"
            ).fetchone()
            == (0,)
        ),
        "the killed sweeper's backend to go",
        within=10,
    )

    assert _counts(db) == (SESSIONS, 0, 0)  # nothing half-finalized: all still active
    ended = await store.finalize_due(500)  # the next pass
    assert len(ended) == SESSIONS
    assert {(e.status.value, e.completion_method.value) for e in ended} == {
        ("completed", "timer_expired")
    }
    assert _counts(db) == (0, SESSIONS, SESSIONS)  # each ended once, with one terminal event
    assert await store.finalize_due(500) == []
    report("sweeper_sigkill", faults=1, sessions_due=SESSIONS, finalized_after=len(ended))
