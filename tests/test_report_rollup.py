"""The report's rollup (migration 0014) against real PostgreSQL: a summary over rolled-up
quarter hours is the summary of their sessions, to the value, in any zone, window and bucket
width; a quarter hour with a running session is not ready; any change to a rolled-up session
(an ended row changed, a start moved, a session added, removed or purged) makes its row stale,
and the summary then reads its sessions; the sweeper's pass rolls up."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from invigilator import analytics
from invigilator.store import SessionStore
from invigilator.sweeper import Sweeper
from support.db import CITUS_WORKERS, TEST_POLICY, sessions_of

ONE_SERVER = "a distributed database keeps no rollup (docs/scaling.md)"

# 480 ended sessions over the two days up to three hours ago (a start every 6 minutes), every
# method, sections 0-4, some paused or reopened, claims from one or two devices and addresses,
# focus lost before some ends, incidents; then 6 running sessions begun 20 minutes ago, and 2 rows
# stored active whose time is long over (lazy expiry) in the middle of the ended ones.
DATASET = """
INSERT INTO candidate (candidate_id)
SELECT 'r' || i FROM generate_series(1, 488) i;
INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes, status,
                          completion_method, completed_at, last_heartbeat, sections_completed,
                          paused_seconds, pause_count, reopen_count)
SELECT 'r' || i, s.start, 60,
       test_session_status_of(m.method), m.method,
       s.start + (7 + i %% 53) * interval '1 minute' + (i %% 7) * interval '1.3 seconds',
       s.start + (3 + i %% 41) * interval '1 minute',
       (SELECT coalesce(jsonb_agg('s' || k), '[]') FROM generate_series(1, i %% 5) k),
       CASE WHEN i %% 9 = 0 THEN 120 + i ELSE 0 END,
       CASE WHEN i %% 9 = 0 THEN 1 ELSE 0 END,
       CASE WHEN i %% 23 = 0 THEN 1 ELSE 0 END
  FROM generate_series(1, 480) i,
       LATERAL (SELECT date_trunc('hour', now()) - interval '51 hours'
                       + i * interval '6 minutes' + (i %% 4) * interval '17 seconds' AS start) s,
       LATERAL (SELECT (ARRAY['manual', 'timer_expired', 'tab_close', 'admin',
                              'heartbeat_timeout', 'admin_terminated', 'timer_abandoned'])
                       [1 + i %% 7] AS method) m;
INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes, last_heartbeat)
SELECT 'r' || i, now() - interval '20 minutes' - (i - 480) * interval '1 minute', 120, now()
  FROM generate_series(481, 486) i;
INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes)
SELECT 'r' || i, date_trunc('hour', now()) - interval '30 hours' + i * interval '1 second', 30
  FROM generate_series(487, 488) i;
INSERT INTO test_session_page (candidate_id, page_id, user_agent, client_address)
SELECT 'r' || i, 'p' || k, 'UA ' || (CASE WHEN i %% 3 = 0 THEN k ELSE 1 END),
       '10.0.0.' || (CASE WHEN i %% 4 = 0 THEN k ELSE 1 END)
  FROM generate_series(1, 480) i, generate_series(1, 1 + i %% 2) k;
INSERT INTO test_session_event (candidate_id, type, at)
SELECT t.candidate_id, 'focus_lost', t.test_start_time + interval '2 minutes'
  FROM test_session t WHERE t.status <> 'active' AND length(t.candidate_id) %% 2 = 0;
INSERT INTO test_session_incident (candidate_id, at, severity, reason_code)
SELECT 'r' || i, now() - interval '40 hours' + i * interval '3 minutes',
       (ARRAY['low', 'medium', 'high'])[1 + i %% 3], 'noise'
  FROM generate_series(1, 480, 11) i;
"""

#: (since, until, zone, bucket width): whole days, odd minutes, zones a quarter and three
#: quarters of an hour off UTC, a window that ends on the running sessions.
WINDOWS = [
    (timedelta(days=3), timedelta(0), "UTC", 5),
    (timedelta(days=2, minutes=53), timedelta(hours=4, minutes=7), "UTC", 7),
    (timedelta(days=3), timedelta(0), "Asia/Kathmandu", 10),
    (timedelta(days=2, hours=5), timedelta(hours=9, minutes=1), "Pacific/Chatham", 3),
    (timedelta(days=3), timedelta(0), "America/St_Johns", 60),
]


def without_clock(summary: Any) -> dict[str, Any]:
    rest = dict(summary)
    rest.pop("generated_at")
    return rest


async def summaries(store: SessionStore, now: datetime) -> list[dict[str, Any]]:
    return [
        without_clock(
            await analytics.summary(
                store.pool, now - back, now - ahead, TEST_POLICY, tz=tz, minute_bucket=width
            )
        )
        for back, ahead, tz, width in WINDOWS
    ]


async def roll_up_all(store: SessionStore) -> int:
    rolled = 0
    while True:
        done = await analytics.roll_up(store.pool, TEST_POLICY, limit=100)
        rolled += done.buckets
        if done.buckets < 100:
            return rolled


async def assert_as_if_nothing_were_rolled_up(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> list[dict[str, Any]]:
    """The summaries as they are equal the summaries with the rollup emptied (every session
    read one by one); returns them."""
    with_rollup = await summaries(store, now)
    db.execute("DELETE FROM test_session_rollup")
    assert await summaries(store, now) == with_rollup
    return with_rollup


def rows(db: psycopg.Connection[Any]) -> dict[datetime, bool]:
    return dict(db.execute("SELECT bucket, ready FROM test_session_rollup").fetchall())


def bucket_of(db: psycopg.Connection[Any], cid: str) -> datetime:
    row = db.execute(
        "SELECT test_session_rollup_bucket(test_start_time) FROM test_session"
        " WHERE candidate_id = %s",
        (cid,),
    ).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def now(db: psycopg.Connection[Any]) -> datetime:
    db.execute(DATASET.replace("%%", "%"))
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_a_rolled_up_summary_is_the_summary_of_its_sessions(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    from_sessions = await summaries(store, now)
    assert from_sessions[0]["total"] == 488
    assert from_sessions[0]["multiple_devices"]["sessions"] > 0
    assert from_sessions[0]["abandonment"]["focus_lost_before"]["count"] > 0
    assert from_sessions[0]["overdue_unswept"] == 2

    assert await roll_up_all(store) > 190
    kept = rows(db)
    # every quarter hour from the first session to 75 minutes ago, the running ones' not yet
    assert set(kept) == {min(kept) + timedelta(minutes=15) * k for k in range(len(kept))}
    assert max(kept) + timedelta(minutes=15) <= now - timedelta(hours=1)
    # a transaction per quarter hour (each its own now()), not one holding every lock
    (distinct,) = db.execute(
        "SELECT count(DISTINCT rolled_at) FROM test_session_rollup"
    ).fetchone() or (0,)
    assert distinct == len(kept)
    stale = {b for b, ready in kept.items() if not ready}
    assert stale == {bucket_of(db, "r487")}  # the rows stored active, whose time is over
    assert await summaries(store, now) == from_sessions


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_a_change_to_a_rolled_up_session_makes_its_row_stale(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    await roll_up_all(store)
    changed = {cid: bucket_of(db, cid) for cid in ("r100", "r200", "r300", "r400")}
    assert all(rows(db)[b] for b in changed.values())
    ready_before = sum(rows(db).values())

    # a change that the summary does not read keeps the row
    db.execute(
        "UPDATE test_session SET pending_answers = '{\"q1\": \"x\"}' WHERE candidate_id = 'r50'"
    )
    assert sum(rows(db).values()) == ready_before

    # an ended session changed (reopened), removed, a start moved, a session added
    db.execute(
        "UPDATE test_session SET status = 'active', completion_method = NULL,"
        " completed_at = NULL, reopen_count = reopen_count + 1 WHERE candidate_id = 'r100'"
    )
    db.execute("DELETE FROM test_session WHERE candidate_id = 'r200'")
    moved_to = changed["r400"] + timedelta(minutes=2)
    db.execute(
        "UPDATE test_session SET test_start_time = %s WHERE candidate_id = 'r300'", (moved_to,)
    )
    db.execute("INSERT INTO candidate (candidate_id) VALUES ('late')")
    db.execute(
        "INSERT INTO test_session (candidate_id, test_start_time, status, completion_method,"
        " completed_at) VALUES ('late', %s, 'completed', 'manual', %s)",
        (changed["r400"] + timedelta(minutes=1), changed["r400"] + timedelta(minutes=20)),
    )
    kept = rows(db)
    assert not any(kept[b] for b in changed.values())
    assert sum(kept.values()) == ready_before - len(set(changed.values()))

    # the summary reads the sessions of the stale rows: as if nothing were rolled up
    with_rollup = await assert_as_if_nothing_were_rolled_up(store, db, now)
    await roll_up_all(store)
    assert await summaries(store, now) == with_rollup
    # the reopened session is stored active: its quarter hour waits; the others are ready again
    kept = rows(db)
    assert not kept[changed["r100"]]
    assert kept[changed["r200"]] and kept[changed["r400"]]


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_retention_makes_the_rows_of_what_it_purged_stale(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    await roll_up_all(store)
    before = await summaries(store, now)
    # the sessions that ended over 40 hours ago lose their page claims and timeline, which
    # the device and focus counts read
    purged = await sessions_of(store).purge_ended(timedelta(hours=40), 500)
    assert purged.sessions > 50
    after = await summaries(store, now)
    assert after != before
    assert after[0]["multiple_devices"]["sessions"] < before[0]["multiple_devices"]["sessions"]
    db.execute("DELETE FROM test_session_rollup")
    assert await summaries(store, now) == after


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_a_sweeper_pass_rolls_up_and_a_truncate_forgets(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    sweeper = Sweeper(sessions_of(store), interval=60, batch_size=50)
    await sweeper.sweep()
    assert sweeper.failures == 0
    assert sweeper.rolled_up == 100  # a pass's share; the next passes go on
    await sweeper.sweep()
    assert sweeper.rolled_up == 200
    assert len(rows(db)) == 200
    db.execute("TRUNCATE test_session CASCADE")
    assert rows(db) == {}


@pytest.mark.skipif(not CITUS_WORKERS, reason="Citus mode only (INVIGILATOR_TEST_CITUS_WORKERS)")
async def test_a_distributed_database_keeps_no_rollup_and_reports_every_session(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    triggers = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'test_session'::regclass"
        " AND tgname LIKE 'test_session_rollup%'"
    ).fetchall()
    assert triggers == []
    assert await sessions_of(store).roll_up(100) == analytics.RolledUp(0, 0)
    first = (await summaries(store, now))[0]
    assert first["total"] == 488
    assert first["overdue_unswept"] == 2


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_the_roll_up_never_takes_a_change_in_flight(
    store: SessionStore, db: psycopg.Connection[Any], db_url: str, now: datetime
) -> None:
    await roll_up_all(store)
    bucket = bucket_of(db, "r150")
    # stale, and last tried long ago: the next roll-up's first pick
    db.execute("UPDATE test_session SET reopen_count = 1 WHERE candidate_id = 'r150'")
    db.execute(
        "UPDATE test_session_rollup SET rolled_at = now() - interval '1 hour' WHERE bucket = %s",
        (bucket,),
    )
    with psycopg.connect(db_url) as writer:  # a change of the same quarter hour, uncommitted
        writer.execute(
            'UPDATE test_session SET sections_completed = \'["s1", "s2", "s3", "s4"]\''
            " WHERE candidate_id = 'r151'"
        )
        assert bucket_of(db, "r151") == bucket
        done = await analytics.roll_up(store.pool, TEST_POLICY, limit=100)
        assert done.buckets == 0  # it stopped at the quarter hour being written
        assert not rows(db)[bucket]
        writer.commit()
    done = await analytics.roll_up(store.pool, TEST_POLICY, limit=100)
    assert done.buckets == 1 and rows(db)[bucket]
    await assert_as_if_nothing_were_rolled_up(store, db, now)


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_a_change_across_many_quarter_hours_takes_one_lock_and_stales_them_all(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    await roll_up_all(store)
    ready = {
        b
        for (b,) in db.execute(
            "SELECT bucket FROM test_session_rollup WHERE ready AND sessions > 0"
        ).fetchall()
    }
    assert len(ready) > 100
    with db.transaction():
        db.execute("UPDATE test_session SET sections_completed = '[]' WHERE status <> 'active'")
        (locks,) = db.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid = pg_backend_pid() AND classid = x'726f6c6c'::bigint"
        ).fetchone() or (0,)
        assert locks <= 17  # at most 16 quarter hours, then the one lock over all
    assert not any(rows(db)[b] for b in ready)
    await roll_up_all(store)
    await assert_as_if_nothing_were_rolled_up(store, db, now)


@pytest.mark.not_on_citus(ONE_SERVER)
async def test_more_stale_quarter_hours_than_ranges_read_merges_the_closest(
    store: SessionStore, db: psycopg.Connection[Any], now: datetime
) -> None:
    await roll_up_all(store)
    # every seventh quarter hour stale: about thirty holes, read as at most eight ranges
    db.execute(
        "UPDATE test_session_rollup SET ready = false"
        " WHERE test_session_rollup_lock_key(bucket) % 7 = 0"
    )
    since, until = now - timedelta(days=3), now
    params: dict[str, Any] = {
        **TEST_POLICY.sql_params(),
        "since": since,
        "until": until,
        "tz": "UTC",
        "bucket": 5,
    }
    parts = db.execute(analytics.Q["summary_parts"], params).fetchall()
    assert len(parts) > analytics.MAX_RAW_PARTS
    analytics.summary_statement([(lo, hi) for lo, hi in parts], params)
    assert len(params["part_lo"]) == analytics.MAX_RAW_PARTS
    await assert_as_if_nothing_were_rolled_up(store, db, now)


@pytest.mark.not_on_citus(ONE_SERVER)
@pytest.mark.parametrize("sessions", [1, 2, 7, 301])
async def test_the_median_and_p90_are_percentile_cont_over_every_completed_session(
    store: SessionStore, db: psycopg.Connection[Any], sessions: int
) -> None:
    # durations on and beside the minute bins' edges, repeated values, shares on twentieths
    db.execute(
        "INSERT INTO candidate (candidate_id) SELECT 'p' || i FROM generate_series(1, %(n)s) i",
        {"n": sessions},
    )
    db.execute(
        """
        INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes, status,
                                  completion_method, completed_at, paused_seconds)
        SELECT 'p' || i, s.start, 20 + i %% 3, 'completed', 'manual',
               s.start + (ARRAY[60, 60, 59.999999, 120, 600, 1200, 61.5, 0.25, 1260,
                                 3 * i])[1 + i %% 10] * interval '1 second',
               CASE WHEN i %% 11 = 0 THEN 30 ELSE 0 END
          FROM generate_series(1, %(n)s) i,
               LATERAL (SELECT date_trunc('hour', now()) - interval '30 hours'
                               + i * interval '2 minutes' AS start) s
        """,
        {"n": sessions},
    )
    expected = db.execute(
        """
        SELECT count(*), round(dp[1]::numeric, 1), round(dp[2]::numeric, 1), round(dm, 1),
               round(sp[1]::numeric, 4), round(sp[2]::numeric, 4), round(sm, 4)
          FROM (
        SELECT percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY d) AS dp,
               percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY d / nullif(a, 0)) AS sp,
               avg(d::numeric) AS dm, avg((d / nullif(a, 0))::numeric) AS sm
          FROM (SELECT greatest(date_part('epoch', completed_at - test_start_time)
                                - paused_seconds, 0) AS d,
                       date_part('epoch', deadline - test_start_time) - paused_seconds AS a
                  FROM test_session) x) y, test_session
         GROUP BY dp, sp, dm, sm
        """
    ).fetchone()
    assert expected is not None

    def stats(summary: dict[str, Any]) -> tuple[Any, ...]:
        d, s = summary["duration_seconds"], summary["duration_share"]
        return d["count"], d["median"], d["p90"], d["mean"], s["median"], s["p90"], s["mean"]

    want = tuple(float(x) for x in expected)  # rounded as the report rounds (numeric)
    now = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    window = (now - timedelta(days=3), now)
    read_one_by_one = await analytics.summary(store.pool, *window, TEST_POLICY)
    assert stats(read_one_by_one) == want
    await roll_up_all(store)
    assert (
        db.execute("SELECT count(*) FROM test_session_rollup WHERE sessions > 0").fetchone()[
            0  # type: ignore[index]
        ]
        > 0
    )
    rolled = await analytics.summary(store.pool, *window, TEST_POLICY)
    assert without_clock(rolled) == without_clock(read_one_by_one)
