"""invigilator.analytics against real PostgreSQL: every metric's exact value on a small
hand-made dataset, the empty database, the window's boundaries and time zone, lazy expiry
(overdue rows counted as they will end, never live), the live view and the query plans."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from invigilator import analytics, sql
from invigilator.config import Settings
from invigilator.db import connector
from invigilator.domain import InvalidInput
from invigilator.store import SessionStore
from support.db import TEST_POLICY, add_candidate

SINCE = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
UNTIL = datetime(2024, 3, 11, tzinfo=UTC)  # the next Monday, excluded
SECTIONS = ["s1", "s2", "s3", "s4"]


def at(day: int, hour: int, minute: float = 0) -> datetime:
    """A moment in March 2024 (UTC)."""
    return datetime(2024, 3, day, hour, tzinfo=UTC) + timedelta(minutes=minute)


def insert_session(
    db: psycopg.Connection[Any],
    cid: str,
    start: datetime,
    minutes: int,
    *,
    status: str = "active",
    method: str | None = None,
    ended: datetime | None = None,
    heartbeat: datetime | None = None,
    sections: int = 0,
    extra: int = 0,
    tab_closed: datetime | None = None,
) -> None:
    add_candidate(db, cid)
    db.execute(
        """
        INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                                  extra_minutes, status, completion_method, completed_at,
                                  last_heartbeat, sections_completed, tab_closed_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            cid,
            start,
            minutes,
            extra,
            status,
            method,
            ended,
            heartbeat,
            json.dumps(SECTIONS[:sections]),
            tab_closed,
        ),
    )


def insert_event(db: psycopg.Connection[Any], cid: str, type_: str, when: datetime) -> None:
    db.execute(
        "INSERT INTO test_session_event (candidate_id, type, at) VALUES (%s, %s, %s)",
        (cid, type_, when),
    )


def build_dataset(db: psycopg.Connection[Any]) -> None:
    """Eleven sessions in [SINCE, UNTIL), two just outside; see the expectations below."""
    completed, abandoned = "completed", "abandoned"
    # Finished: manual, timer_expired (one with a 30 min extension), admin.
    insert_session(db, "s1", at(4, 0), 60, status=completed, method="manual",
                   ended=at(4, 0, 30), sections=3)  # fmt: skip
    insert_session(db, "s2", at(4, 10), 60, status=completed, method="manual",
                   ended=at(4, 10, 45), sections=3)  # fmt: skip
    insert_session(db, "s3", at(5, 14), 30, status=completed, method="timer_expired",
                   ended=at(5, 14, 30), sections=2)  # fmt: skip
    insert_session(db, "s4", at(5, 15), 60, extra=30, status=completed, method="timer_expired",
                   ended=at(5, 16, 30), sections=2)  # fmt: skip
    insert_session(db, "s9", at(10, 12), 45, status=completed, method="admin",
                   ended=at(10, 12, 40), sections=3)  # fmt: skip
    # Gave up: a tab close (status completed), heartbeat timeouts, a staff termination.
    insert_session(db, "s5", at(6, 9), 60, status=completed, method="tab_close",
                   ended=at(6, 9, 12), sections=1)  # fmt: skip
    insert_session(db, "s6", at(6, 20), 60, status=abandoned, method="heartbeat_timeout",
                   heartbeat=at(6, 20, 7.5), ended=at(6, 20, 12.5))  # fmt: skip
    insert_session(db, "s7", at(7, 23, 50), 60, status=abandoned, method="heartbeat_timeout",
                   heartbeat=at(8, 0, 20), ended=at(8, 0, 25), sections=2)  # fmt: skip
    insert_session(db, "s8", at(9, 11), 45, status=abandoned, method="admin_terminated",
                   ended=at(9, 11, 20), sections=1)  # fmt: skip
    # Stored active but over long ago, never swept: counted as they will end (lazy expiry).
    insert_session(db, "s10", at(8, 8), 60, heartbeat=at(8, 8, 20), sections=1)  # silent: 08:25
    insert_session(db, "s11", at(9, 9), 30, heartbeat=at(9, 9, 29), sections=2)  # timer: 09:30
    # Outside the window: exactly at `until`, and a second before `since`.
    insert_session(db, "s12", UNTIL, 60, status=completed, method="manual", ended=at(11, 0, 20))
    insert_session(db, "s13", SINCE - timedelta(seconds=1), 60, status=completed,
                   method="manual", ended=at(4, 0, 20))  # fmt: skip
    # Focus: before the end counts; after the end, other types and other windows do not.
    insert_event(db, "s5", "focus_lost", at(6, 9, 5))
    insert_event(db, "s6", "tab_hidden", at(6, 20, 3))
    insert_event(db, "s7", "focus_regained", at(8, 0, 10))
    insert_event(db, "s8", "tab_hidden", at(9, 11, 30))
    insert_event(db, "s9", "focus_lost", at(10, 12, 10))
    insert_event(db, "s13", "focus_lost", at(4, 0, 5))


def dense(counts: dict[int, int], upto: int, width: int = 5) -> list[dict[str, int]]:
    return [
        {"from_minute": b * width, "to_minute": (b + 1) * width, "count": counts.get(b, 0)}
        for b in range(upto + 1)
    ]


EXPECTED: dict[str, Any] = {
    "total": 11,
    "active": 0,
    "completed": 7,  # s1 s2 s3 s4 s5 s9 s11
    "abandoned": 4,  # s6 s7 s8 s10
    "overdue_unswept": 2,  # s10 s11
    "completion_rate": 0.6364,  # 7 / 11
    "by_method": {
        "manual": {"status": "completed", "count": 2, "rate": 0.1818},
        "timer_expired": {"status": "completed", "count": 3, "rate": 0.2727},  # s3 s4 s11
        "tab_close": {"status": "completed", "count": 1, "rate": 0.0909},
        "admin": {"status": "completed", "count": 1, "rate": 0.0909},
        "heartbeat_timeout": {"status": "abandoned", "count": 3, "rate": 0.2727},  # s6 s7 s10
        "admin_terminated": {"status": "abandoned", "count": 1, "rate": 0.0909},
        "timer_abandoned": {"status": "abandoned", "count": 0, "rate": 0.0},
    },
    "paused": {"sessions": 0, "now": 0},
    "reopened": {"sessions": 0, "reopenings": 0},
    # 720 1800 1800 1800 2400 2700 5400: mean 16620/7, p90 = 2700 + 0.4 * (5400 - 2700)
    "duration_seconds": {"count": 7, "mean": 2374.3, "median": 1800.0, "p90": 3780.0},
    # .2 .5 .75 .8889 1 1 1 (s4's allowed time includes its extension)
    "duration_share": {"mean": 0.7627, "median": 0.8889, "p90": 1.0},
    "duration_histogram": dense({2: 1, 6: 3, 8: 1, 9: 1, 18: 1}, 18),
    "abandonment": {
        "total": 5,  # s5 (tab_close) s6 s7 s10 (heartbeat_timeout) s8 (admin_terminated)
        "share_of_ended": 0.4545,
        "by_reason": {"heartbeat_timeout": 3, "tab_close": 1, "admin_terminated": 1},
        "by_sections_completed": [
            {"sections": 0, "reached": 11, "count": 1, "rate": 0.0909},  # s6
            {"sections": 1, "reached": 10, "count": 3, "rate": 0.3},  # s5 s8 s10
            {"sections": 2, "reached": 7, "count": 1, "rate": 0.1429},  # s7
            {"sections": 3, "reached": 3, "count": 0, "rate": 0.0},
        ],
        # left at minute 12 (s5), 7.5 (s6, last heartbeat), 30 (s7), 20 (s8), 20 (s10)
        "by_minute": dense({1: 1, 2: 1, 4: 2, 6: 1}, 6),
        "by_hour": [{"hour": h, "count": 1 if h in (0, 8, 9, 11, 20) else 0} for h in range(24)],
        "by_weekday": [
            {"weekday": d, "name": name, "count": {3: 2, 5: 2, 6: 1}.get(d, 0)}
            for d, name in enumerate(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], 1)
        ],
        # s5 and s6 of the five (s9 finished; s8's came after its end; s7's was a regain)
        "focus_lost_before": {"count": 2, "share": 0.4},
    },
    "flagged": {
        "total": 0,
        "share": 0.0,
        "incidents": 0,
        "by_severity": {"low": 0, "medium": 0, "high": 0},
    },
    "daily": [
        {"date": "2024-03-04", "started": 2, "completed": 2, "abandoned": 0, "active": 0},
        {"date": "2024-03-05", "started": 2, "completed": 2, "abandoned": 0, "active": 0},
        {"date": "2024-03-06", "started": 2, "completed": 1, "abandoned": 1, "active": 0},
        {"date": "2024-03-07", "started": 1, "completed": 0, "abandoned": 1, "active": 0},
        {"date": "2024-03-08", "started": 1, "completed": 0, "abandoned": 1, "active": 0},
        {"date": "2024-03-09", "started": 2, "completed": 1, "abandoned": 1, "active": 0},
        {"date": "2024-03-10", "started": 1, "completed": 1, "abandoned": 0, "active": 0},
    ],
    # no page claimed these sessions (tests/api/test_page_claims.py counts some that were)
    "multiple_devices": {"sessions": 0, "share": 0.0, "devices": 0, "addresses": 0},
}


def without_clock(summary: Any) -> dict[str, Any]:
    rest = dict(summary)
    rest.pop("generated_at")
    rest.pop("window")
    return rest


async def test_every_metric_on_a_hand_made_dataset(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    build_dataset(db)
    summary = await analytics.summary(store.pool, SINCE, UNTIL, TEST_POLICY)
    assert summary["window"] == {
        "since": "2024-03-04T00:00:00+00:00",
        "until": "2024-03-11T00:00:00+00:00",
        "timezone": "UTC",
    }
    assert without_clock(summary) == EXPECTED
    assert json.loads(json.dumps(summary)) == summary  # JSON as it is


async def test_the_empty_database_has_every_metric_defined(store: SessionStore) -> None:
    summary = await analytics.summary(store.pool, SINCE, UNTIL, TEST_POLICY)
    zero_days = [
        {"date": f"2024-03-{d:02d}", "started": 0, "completed": 0, "abandoned": 0, "active": 0}
        for d in range(4, 11)
    ]
    assert without_clock(summary) == {
        "total": 0,
        "active": 0,
        "completed": 0,
        "abandoned": 0,
        "overdue_unswept": 0,
        "completion_rate": None,
        "by_method": {
            m: {"status": s, "count": 0, "rate": None}
            for m, s in [
                ("manual", "completed"),
                ("timer_expired", "completed"),
                ("tab_close", "completed"),
                ("admin", "completed"),
                ("heartbeat_timeout", "abandoned"),
                ("admin_terminated", "abandoned"),
                ("timer_abandoned", "abandoned"),
            ]
        },
        "paused": {"sessions": 0, "now": 0},
        "reopened": {"sessions": 0, "reopenings": 0},
        "duration_seconds": {"count": 0, "mean": None, "median": None, "p90": None},
        "duration_share": {"mean": None, "median": None, "p90": None},
        "duration_histogram": [],
        "abandonment": {
            "total": 0,
            "share_of_ended": None,
            "by_reason": {"heartbeat_timeout": 0, "tab_close": 0, "admin_terminated": 0},
            "by_sections_completed": [],
            "by_minute": [],
            "by_hour": [{"hour": h, "count": 0} for h in range(24)],
            "by_weekday": [
                {"weekday": d, "name": n, "count": 0}
                for d, n in enumerate(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], 1)
            ],
            "focus_lost_before": {"count": 0, "share": None},
        },
        "flagged": {
            "total": 0,
            "share": None,
            "incidents": 0,
            "by_severity": {"low": 0, "medium": 0, "high": 0},
        },
        "daily": zero_days,
        "multiple_devices": {"sessions": 0, "share": None, "devices": 0, "addresses": 0},
    }
    # The default window (the last 30 days) and an empty window are defined too.
    default = await analytics.summary(store.pool)
    assert default["total"] == 0 and len(default["daily"]) in (30, 31)
    assert default["window"]["until"] == default["generated_at"]
    empty = await analytics.summary(store.pool, SINCE, SINCE)
    assert empty["total"] == 0 and empty["daily"] == []
    live = await analytics.live(store.pool, TEST_POLICY)
    assert (live["count"], live["silent"], live["sessions"]) == (0, 0, [])


async def test_the_window_is_half_open_on_the_start_time(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    build_dataset(db)
    first_instant = await analytics.summary(
        store.pool, SINCE, SINCE + timedelta(microseconds=1), TEST_POLICY
    )
    assert first_instant["total"] == 1  # s1, started exactly at `since`
    next_week = await analytics.summary(store.pool, UNTIL, UNTIL + timedelta(days=7), TEST_POLICY)
    assert next_week["total"] == 1  # s12, started exactly at the first window's `until`
    before = await analytics.summary(store.pool, SINCE - timedelta(days=1), SINCE, TEST_POLICY)
    assert before["total"] == 1  # s13, a second before `since`
    # Consecutive windows count every session once.
    week = await analytics.summary(store.pool, SINCE, UNTIL, TEST_POLICY)
    assert week["total"] + next_week["total"] + before["total"] == 13


async def test_time_zone_and_bucket_width_shape_the_breakdowns(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    build_dataset(db)
    berlin = await analytics.summary(
        store.pool, SINCE, UNTIL, TEST_POLICY, tz="Europe/Berlin", minute_bucket=10
    )
    assert berlin["total"] == 11 and berlin["window"]["timezone"] == "Europe/Berlin"
    # UTC+1 in March: s7 left at 00:20 UTC, 01:20 in Berlin; the others an hour later too.
    hours = {h["hour"]: h["count"] for h in berlin["abandonment"]["by_hour"] if h["count"]}
    assert hours == {1: 1, 9: 1, 10: 1, 12: 1, 21: 1}
    # The window starts at 01:00 Berlin time on the 4th and ends at 01:00 on the 11th;
    # s7 started at 00:50 on the 8th there.
    days = {d["date"]: d["started"] for d in berlin["daily"]}
    assert list(days) == [f"2024-03-{d:02d}" for d in range(4, 12)]
    assert days["2024-03-07"] == 0 and days["2024-03-08"] == 2
    assert berlin["abandonment"]["by_minute"] == dense({0: 1, 1: 1, 2: 2, 3: 1}, 3, width=10)


async def test_bad_input_is_invalid_and_changes_nothing(store: SessionStore) -> None:
    with pytest.raises(InvalidInput, match="since"):
        await analytics.summary(store.pool, UNTIL, SINCE)
    with pytest.raises(InvalidInput, match="at most 3660 days"):
        await analytics.summary(store.pool, datetime(1970, 1, 1, tzinfo=UTC), UNTIL)
    with pytest.raises(InvalidInput, match="time zone"):
        await analytics.summary(store.pool, tz="Mars/Olympus")
    with pytest.raises(InvalidInput, match="minute_bucket"):
        await analytics.summary(store.pool, minute_bucket=0)
    with pytest.raises(InvalidInput, match="offset"):
        await analytics.summary(store.pool, datetime(2024, 3, 4))
    with pytest.raises(InvalidInput, match="limit"):
        await analytics.live(store.pool, limit=0)
    assert analytics.parse_bound("2024-03-04") == SINCE
    assert analytics.parse_bound("2024-03-04T01:00", "Europe/Berlin") == SINCE
    assert analytics.parse_bound("2024-03-04T00:00:00+00:00") == SINCE
    with pytest.raises(InvalidInput, match="not a date"):
        analytics.parse_bound("last tuesday")


def insert_live_dataset(db: psycopg.Connection[Any]) -> None:
    """Sessions relative to now(): five running (two of them silent) and three that are not."""
    rows = [
        # cid, started ago, minutes, last heartbeat ago, tab closed ago, status/method
        ("fresh", "10 min", 60, "5 s", None, None),
        ("quiet", "10 min", 60, "40 s", None, None),  # silent: over 2 × 15 s
        ("never", "10 s", 60, None, None, None),  # no heartbeat yet, counts from the start
        ("mute", "45 s", 60, None, None, None),  # silent since its start
        ("closing", "20 min", 60, "12 s", "10 s", None),  # tab-close grace running
        ("gone", "20 min", 60, "10 min", None, None),  # due: abandoned, not swept yet
        ("late", "61 min", 60, "5 s", None, None),  # due: time is up, not swept yet
        ("done", "30 min", 60, "5 min", None, ("completed", "manual")),
    ]
    for cid, started, minutes, beat, closed, ended in rows:
        add_candidate(db, cid)
        db.execute(
            """
            INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                                      last_heartbeat, tab_closed_at, status,
                                      completion_method, completed_at)
            VALUES (%(cid)s, now() - %(started)s::interval, %(minutes)s,
                    now() - %(beat)s::interval, now() - %(closed)s::interval,
                    %(status)s, %(method)s,
                    CASE WHEN %(ended)s THEN now() - interval '5 min' END)
            """,
            {
                "cid": cid,
                "started": started,
                "minutes": minutes,
                "beat": beat,
                "closed": closed,
                "status": ended[0] if ended else "active",
                "method": ended[1] if ended else None,
                "ended": ended is not None,
            },
        )


async def test_live_lists_running_sessions_silent_first_never_overdue_ones(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    insert_live_dataset(db)
    live = await analytics.live(store.pool, TEST_POLICY)
    assert live["silent_after_seconds"] == 30
    assert (live["count"], live["silent"]) == (5, 2)
    sessions = {s["candidate_id"]: s for s in live["sessions"]}
    assert [s["candidate_id"] for s in live["sessions"]] == [
        "mute", "quiet", "closing", "never", "fresh"
    ]  # fmt: skip
    assert [s["silent"] for s in live["sessions"]] == [True, True, False, False, False]
    assert 40 <= sessions["quiet"]["seconds_since_heartbeat"] <= 42
    assert 45 <= sessions["mute"]["seconds_since_heartbeat"] <= 47
    assert sessions["mute"]["last_heartbeat"] is None
    assert 50 * 60 - 2 <= sessions["fresh"]["remaining_seconds"] <= 50 * 60
    assert sessions["closing"]["tab_closed"] and not sessions["fresh"]["tab_closed"]
    assert sessions["fresh"]["sections_completed"] == 0
    assert datetime.fromisoformat(sessions["fresh"]["deadline"]).utcoffset() == timedelta(0)
    # The limit keeps the most worrying rows and still counts them all.
    top = await analytics.live(store.pool, TEST_POLICY, limit=2)
    assert [s["candidate_id"] for s in top["sessions"]] == ["mute", "quiet"]
    assert (top["count"], top["silent"]) == (5, 2)
    # A heartbeat clears the flag.
    await store.heartbeat("quiet")
    after = await analytics.live(store.pool, TEST_POLICY)
    assert after["silent"] == 1
    assert next(s for s in after["sessions"] if s["candidate_id"] == "quiet")["silent"] is False


async def test_summary_counts_overdue_rows_as_they_will_end_and_agrees_with_live(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    insert_live_dataset(db)
    summary = await analytics.summary(store.pool, policy=TEST_POLICY)
    assert (summary["total"], summary["active"], summary["overdue_unswept"]) == (8, 5, 2)
    assert summary["by_method"]["heartbeat_timeout"]["count"] == 1  # gone
    assert summary["by_method"]["timer_expired"]["count"] == 1  # late
    assert summary["by_method"]["manual"]["count"] == 1  # done
    # (Summed over the days: shortly after midnight some started on the day before.)
    assert sum(day["active"] for day in summary["daily"]) == 5
    live = await analytics.live(store.pool, TEST_POLICY)
    assert live["count"] == summary["active"]
    # After the sweeper's pass the numbers are the same and nothing is overdue.
    await store.finalize_due(limit=100)
    swept = await analytics.summary(store.pool, policy=TEST_POLICY)
    assert swept["overdue_unswept"] == 0
    assert without_clock(swept) == {**without_clock(summary), "overdue_unswept": 0}


def test_summary_rows_flatten_every_number() -> None:
    summary: Any = {
        "window": {"since": "a", "until": "b", "timezone": "UTC"},
        "generated_at": "c",
        **EXPECTED,
    }
    rows = list(analytics.summary_rows(summary))
    assert ("total", "", 11) in rows
    assert ("by_method.rate", "timer_expired", 0.2727) in rows
    assert ("abandonment.by_minute", "20-25", 2) in rows
    assert ("abandonment.by_weekday", "Wed", 2) in rows
    assert ("daily.abandoned", "2024-03-06", 1) in rows
    assert ("abandonment.by_sections_completed.rate", "1", 0.3) in rows
    assert len({(m, d) for m, d, _ in rows}) == len(rows)  # each (metric, dimension) once


@pytest.mark.not_on_citus("EXPLAIN on a coordinator shows the distributed plan, not the shard's")
async def test_the_window_uses_the_start_time_index_and_focus_probes_the_event_key(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    # A year of sessions (one start every 26 minutes), most of them outside a one-day window;
    # every third one given up after a focus loss, every tenth flagged by an incident.
    db.execute(
        """
        INSERT INTO candidate (candidate_id) SELECT 'c' || i FROM generate_series(1, 20000) i;
        INSERT INTO test_session (candidate_id, test_start_time, status, completion_method,
                                  completed_at)
        SELECT 'c' || i, now() - i * interval '26 minutes',
               CASE WHEN i % 3 = 0 THEN 'abandoned' ELSE 'completed' END,
               CASE WHEN i % 3 = 0 THEN 'heartbeat_timeout' ELSE 'manual' END,
               now() - i * interval '26 minutes' + interval '20 minutes'
          FROM generate_series(1, 20000) i;
        INSERT INTO test_session_event (candidate_id, type, at)
        SELECT 'c' || i, 'focus_lost', now() - i * interval '26 minutes' + interval '5 minutes'
          FROM generate_series(1, 20000) i;
        INSERT INTO test_session_incident (candidate_id, at, severity, reason_code)
        SELECT 'c' || i, now() - i * interval '26 minutes' + interval '10 minutes', 'low', 'noise'
          FROM generate_series(10, 20000, 10) i;
        INSERT INTO test_session_page (candidate_id, page_id, user_agent, client_address)
        SELECT 'c' || i, 'p' || k, 'UA ' || (i % k), '10.0.0.1'
          FROM generate_series(1, 20000) i, generate_series(1, 2) k;
        ANALYZE candidate, test_session, test_session_event, test_session_incident,
                test_session_page;
        """
    )
    until = datetime.now(UTC) - timedelta(days=100)
    params = {
        **TEST_POLICY.sql_params(),
        "since": until - timedelta(days=1),
        "until": until,
        "tz": "UTC",
        "bucket": 5,
    }
    parts = db.execute(sql.analytics_queries()["summary_parts"], params).fetchall()
    assert parts == [(params["since"], params["until"])]  # nothing rolled up: read it all
    statement = analytics.summary_statement([(lo, hi) for lo, hi in parts], params)
    plan = "\n".join(
        row[0] for row in db.execute("EXPLAIN (COSTS OFF) " + statement, params).fetchall()
    )
    assert "Index Scan using idx_test_session_test_start_time" in plan
    # the focus question probes the event log by candidate (its primary key, or any index
    # made for it), once per session that gave up
    assert re.search(r"Index (Only )?Scan using \w+ on test_session_event", plan), plan
    # and the page claims by candidate, per session of the window (not all 40,000 of them)
    assert re.search(r"Index (Only )?Scan using \w+ on test_session_page", plan), plan
    assert "Seq Scan" not in plan
    summary = await analytics.summary(store.pool, params["since"], until, TEST_POLICY)
    assert summary["total"] in (55, 56)
    assert summary["abandonment"]["total"] in (18, 19)
    assert summary["abandonment"]["focus_lost_before"]["share"] == 1.0
    # two claims each, from two user agents for every odd i: about half the window's sessions
    assert summary["multiple_devices"]["devices"] in (27, 28)
    assert summary["multiple_devices"]["addresses"] == 0


async def test_durations_leave_out_paused_time_and_the_report_counts_paused_and_reopened(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    from support.db import sessions_of, shift_session

    sessions = sessions_of(store)
    paused, reopened, plain = (add_candidate(db) for _ in range(3))
    for cid in (paused, reopened, plain):
        await sessions.start(cid, actor="staff:ops", duration_minutes=60)
    # Paused for 20 of its 50 minutes, then submitted: 30 minutes of test time.
    await sessions.pause(paused, actor="staff:ops")
    shift_session(
        db, paused, test_start_time=timedelta(minutes=50), paused_at=timedelta(minutes=30)
    )
    await sessions.resume(paused, actor="staff:ops")
    shift_session(db, paused, resumed_at=timedelta(minutes=10), last_heartbeat=timedelta(0))
    db.execute(
        "UPDATE test_session SET paused_seconds = 1200 WHERE candidate_id = %s", (paused,)
    )  # the 20 minutes, as the resume 10 minutes ago recorded them
    await sessions.complete(paused)
    await sessions.complete(reopened)
    await sessions.reopen(reopened, 5, actor="staff:ops")
    await sessions.pause(plain, actor="staff:ops")  # paused right now
    report = await analytics.summary(store.pool, policy=TEST_POLICY)
    assert report["paused"] == {"sessions": 2, "now": 1}
    assert report["reopened"] == {"sessions": 1, "reopenings": 1}
    assert report["duration_seconds"]["count"] == 1  # the reopened one runs again
    assert report["duration_seconds"]["mean"] == pytest.approx(30 * 60, abs=5)
    assert report["by_method"]["timer_abandoned"]["count"] == 0


async def test_more_than_one_device_or_address_counts_distinct_values_only(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """ "More than one" is two distinct values among a session's claims, whatever their number
    and order; a claim with no user agent (or address) is one value, the empty one."""
    pages = {
        "same": [("A", "10.0.0.1"), ("A", "10.0.0.1"), ("A", "10.0.0.1")],
        "second-device": [("A", "10.0.0.1"), ("A", "10.0.0.1"), ("B", "10.0.0.1")],
        "unknown-agent": [(None, "10.0.0.2"), ("A", "10.0.0.2")],
        "second-address": [("A", "10.0.0.3"), ("A", None)],
        "both": [("A", "10.0.0.4"), ("B", "10.0.0.5")],
        "one-page": [("A", "10.0.0.6")],
        "no-page": [],
    }
    for cid, claims in pages.items():
        add_candidate(db, cid)
        db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (cid,))
        for n, (agent, address) in enumerate(claims):
            db.execute(
                "INSERT INTO test_session_page (candidate_id, page_id, user_agent,"
                " client_address) VALUES (%s, %s, %s, %s)",
                (cid, f"p{n}", agent, address),
            )
    since = datetime.now(UTC) - timedelta(hours=1)
    summary = await analytics.summary(store.pool, since, None, TEST_POLICY)
    assert summary["multiple_devices"] == {
        "sessions": 4,
        "share": round(4 / 7, 4),
        "devices": 3,
        "addresses": 2,
    }


@pytest.mark.parametrize(
    ("connection_ms", "effective"), [(1_000, "2min"), (300_000, "5min"), (0, "0")]
)
def test_the_summary_raises_a_shorter_statement_timeout_and_no_other(
    db: psycopg.Connection[Any], connection_ms: int, effective: str
) -> None:
    """The service's statement_timeout (10 s) guards its requests; the summary's read-only
    transaction gets at least SUMMARY_STATEMENT_TIMEOUT_MS, never less than the connection's,
    and no limit stays no limit."""
    db.execute(f"SET statement_timeout = {connection_ms}")
    with db.transaction():
        db.execute(
            sql.analytics_queries()["longer_timeout"],
            {"ms": analytics.SUMMARY_STATEMENT_TIMEOUT_MS},
        )
        assert db.execute("SHOW statement_timeout").fetchone() == (effective,)
    db.execute("RESET statement_timeout")


async def test_a_summary_longer_than_the_services_statement_timeout_completes(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A pool whose statements may run 1 s (as the service's may run 10 s): the summary waits
    1.5 s for a lock on test_session and still answers (it was cancelled before)."""
    settings = Settings(statement_timeout_ms=1_000)
    pool = connector.pool_for(db_url, settings, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        with psycopg.connect(db_url) as holder:
            holder.execute("LOCK TABLE test_session IN ACCESS EXCLUSIVE MODE")
            summary = asyncio.ensure_future(analytics.summary(pool, None, None, TEST_POLICY))
            await asyncio.sleep(1.5)
            assert not summary.done()
            holder.rollback()
        assert (await summary)["total"] == 0
    finally:
        await pool.close()
