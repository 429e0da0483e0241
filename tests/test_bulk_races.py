"""Bulk actions racing the sweepers and the candidates: every session still ends exactly once,
and the reply says truly what the bulk action did to each."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg

from invigilator.store import SessionStore
from support.db import sessions_of
from support.sweeps import add_sessions


def terminal_events(db: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(
        db.execute(
            "SELECT candidate_id, count(*) FROM test_session_event "
            "WHERE type IN ('completed', 'abandoned') GROUP BY candidate_id"
        ).fetchall()
    )


async def test_a_bulk_end_racing_four_sweepers_ends_each_session_once(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    due = add_sessions(
        db, "due", 150, started_ago=timedelta(minutes=61), heartbeat_ago=timedelta(0)
    )
    running = add_sessions(
        db, "run", 150, started_ago=timedelta(minutes=5), heartbeat_ago=timedelta(0)
    )
    sessions = sessions_of(store)
    ids = [cid for pair in zip(due, running, strict=True) for cid in pair]  # interleaved

    async def sweeper() -> None:
        ended = await sessions.sweep(20)
        while ended:  # each batch its own transaction, skipping rows another sweeper holds
            ended = await sessions.sweep(20)

    report, *_ = await asyncio.gather(
        sessions.bulk(
            "end", {"outcome": "terminate", "reason": "room closed"}, actor="staff:t",
            candidate_ids=ids,
        ),
        *(sweeper() for _ in range(4)),
    )  # fmt: skip

    assert [item.candidate_id for item in report.items] == ids
    assert terminal_events(db) == dict.fromkeys(ids, 1)
    methods = dict(db.execute("SELECT candidate_id, completion_method FROM test_session"))
    items = {item.candidate_id: item for item in report.items}
    for cid in running:  # the sweepers never take a session with time left
        assert methods[cid] == "admin_terminated" and items[cid].result == "changed"
    for cid in due:  # its end was due: the rules end it, whoever gets there first
        assert methods[cid] == "timer_expired" and items[cid].result == "unchanged"


async def test_a_bulk_extend_racing_the_candidates_submits(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    ids = add_sessions(db, "c", 200, started_ago=timedelta(minutes=5), heartbeat_ago=timedelta(0))
    sessions = sessions_of(store)

    async def submit_half() -> None:
        for cid in ids[::2]:
            await sessions.complete(cid)

    report, _ = await asyncio.gather(
        sessions.bulk("extend", {"minutes": 10}, actor="staff:t", candidate_ids=ids),
        submit_half(),
    )

    rows = dict(
        (cid, (status, extra))
        for cid, status, extra in db.execute(
            "SELECT candidate_id, status, extra_minutes FROM test_session"
        )
    )
    extended = dict(
        db.execute(
            "SELECT candidate_id, count(*) FROM test_session_event WHERE type = 'time_extended' "
            "GROUP BY candidate_id"
        ).fetchall()
    )
    for item in report.items:
        status, extra = rows[item.candidate_id]
        if item.result == "changed":  # extended before its end, or still running
            assert extra == 10 and extended[item.candidate_id] == 1
        else:  # refused: it had ended first, and is not extended
            assert (item.code, status, extra) == ("session_ended", "completed", 0)
            assert item.candidate_id not in extended
    for cid in ids[1::2]:  # nobody submitted these: every one extended
        assert rows[cid] == ("active", 10)
    assert terminal_events(db) == dict.fromkeys(ids[::2], 1)
