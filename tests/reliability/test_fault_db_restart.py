"""Database restart under load: requests during the outage get a fast 503 problem+json
`database_unavailable` (never a 500, never a hang past the configured timeout), the pool
recovers by itself, and no acknowledged answer is lost.

The test runs on a private PostgreSQL (`private_pg`): the shared test server never stops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
from faults import (
    Candidate,
    PrivatePostgres,
    half_written,
    lost_answers,
    report,
    start_candidates,
)

from support.api import STAFF_KEY, in_process_api, make_settings
from support.db import ANSWERS, SEQS

CONNECT_TIMEOUT = 2.0  # INVIGILATOR_DB_CONNECT_TIMEOUT_SECONDS for this test
SLACK = 3.0  # scheduling slack on a loaded 2-core machine; a hang would be far longer
CANDIDATES = 6


async def test_database_restart_under_load(private_pg: PrivatePostgres) -> None:
    settings = make_settings(
        db_connect_timeout_seconds=CONNECT_TIMEOUT, pool_min_size=2, pool_max_size=4
    )
    outcomes: list[tuple[str, int, float, str]] = []  # (phase, status, seconds, code)
    phase = "before"
    stop = asyncio.Event()

    async with in_process_api(private_pg.url, settings) as api:
        client = api.client
        candidates = await start_candidates(client, "db-restart", CANDIDATES)

        async def candidate_loop(candidate: Candidate) -> None:
            while not stop.is_set():
                seq = candidate.next_seq
                candidate.next_seq += 1
                started = time.monotonic()
                response = await candidate.save(client, seq)
                assert response is not None  # in-process: there is always an answer
                elapsed = time.monotonic() - started
                code = ""
                if response.status_code >= 300:
                    assert response.headers["content-type"].startswith(
                        "application/problem+json"
                    ), response.text
                    code = response.json()["code"]
                    assert response.headers.get("retry-after"), response.headers
                outcomes.append((phase, response.status_code, elapsed, code))
                await asyncio.sleep(0.01)

        loops = [asyncio.create_task(candidate_loop(c)) for c in candidates]
        try:
            await asyncio.sleep(0.7)
            phase = "outage"
            await asyncio.to_thread(private_pg.stop)
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "database_unavailable"
            await asyncio.sleep(2 * CONNECT_TIMEOUT + 0.5)
            await asyncio.to_thread(private_pg.start)
            phase = "after"
            restarted = time.monotonic()
            # The pool must recover by itself: wait (bounded) for 30 successes in a row.
            while time.monotonic() - restarted < 20:
                tail = [o for o in outcomes if o[0] == "after"][-30:]
                if len(tail) == 30 and all(o[1] == 200 for o in tail):
                    break
                await asyncio.sleep(0.05)
            recovered_after = time.monotonic() - restarted
        finally:
            stop.set()
            await asyncio.gather(*loops)

        assert (await client.get("/readyz")).status_code == 200
        # A client retries what was not acknowledged, with the same seq (idempotent).
        retried = 0
        for candidate in candidates:
            for seq in sorted(candidate.unacknowledged):
                response = await candidate.save(client, seq)
                retried += 1
                assert response is not None and response.status_code == 200
        states: dict[str, dict[str, Any]] = {}
        for candidate in candidates:
            response = await client.get(
                f"/api/v1/sessions/{candidate.candidate_id}/state",
                headers={"Authorization": f"Bearer {STAFF_KEY}"},
            )
            states[candidate.candidate_id] = response.json()

    statuses = Counter((o[0], o[1]) for o in outcomes)
    codes = Counter(o[3] for o in outcomes if o[3])
    slowest = max(o[2] for o in outcomes)
    assert all(o[1] in (200, 503) for o in outcomes), statuses  # never a 500
    assert set(codes) == {"database_unavailable"}, codes
    assert statuses[("outage", 503)] > 0, statuses  # the fault did happen
    assert slowest <= CONNECT_TIMEOUT + SLACK, slowest  # no request hung
    tail = [o[1] for o in outcomes if o[0] == "after"][-30:]
    assert tail == [200] * 30, f"the pool did not recover in 20 s: {statuses}"

    # No acknowledged answer lost; nothing half-written (the DB can only say: all or nothing).
    lost = 0
    for candidate in candidates:
        row = await _row(private_pg.url, candidate.candidate_id)
        lost += len(lost_answers(candidate, row["pending_answers"]))
        assert not half_written(candidate, row["pending_answers"], row["answer_seq"])
        assert set(candidate.acknowledged) == set(range(1, candidate.next_seq))
        assert states[candidate.candidate_id]["pending_answers"] == row["pending_answers"]
    assert lost == 0
    report(
        "db_restart",
        faults=1,
        requests=len(outcomes),
        retried=retried,
        requests_sent=len(outcomes) + retried,
        acknowledged_during_load=statuses[("before", 200)]
        + statuses[("outage", 200)]
        + statuses[("after", 200)],
        refused_503=sum(n for (_, s), n in statuses.items() if s == 503),
        status_500=sum(n for (_, s), n in statuses.items() if s >= 500 and s != 503),
        slowest_seconds=round(slowest, 2),
        recovered_seconds=round(recovered_after, 2),
        answers_acknowledged=sum(len(c.acknowledged) for c in candidates),
        answers_lost=lost,
    )


async def _row(url: str, candidate_id: str) -> dict[str, Any]:
    import psycopg
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT "
            f"{ANSWERS} AS pending_answers, "
            f"{SEQS} AS answer_seq"
            " FROM test_session WHERE candidate_id = %s",
            (candidate_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def test_a_restart_while_idle_costs_no_request(private_pg: PrivatePostgres) -> None:
    """The pool holds connections the restart killed; the first requests after it must not
    be the ones to find out (each pooled connection is checked before it is handed out)."""
    settings = make_settings(
        db_connect_timeout_seconds=CONNECT_TIMEOUT, pool_min_size=4, pool_max_size=4
    )
    async with _started(private_pg, settings, "idle") as (app, client, token):
        candidate = Candidate("idle", token)
        await app.state.runtime.pool.wait(timeout=10)  # all 4 connections open
        await asyncio.to_thread(private_pg.stop)
        await asyncio.to_thread(private_pg.start)
        statuses = []
        for seq in range(1, 9):
            response = await candidate.save(client, seq)
            assert response is not None
            statuses.append(response.status_code)
    acknowledged = len(candidate.acknowledged)
    row = await _row(private_pg.url, "idle")
    lost = len(lost_answers(candidate, row["pending_answers"]))
    report(
        "db_restart_idle",
        faults=1,
        requests=len(statuses),
        failed=8 - statuses.count(200),
        answers_acknowledged=acknowledged,
        answers_lost=lost,
    )
    assert lost == 0
    assert statuses == [200] * 8, statuses


async def test_a_restart_while_idle_costs_no_heartbeat(private_pg: PrivatePostgres) -> None:
    """Heartbeat batches run on their own pool, without a check before each batch: the batch
    that meets a connection the restart killed is written once more on a new connection.
    The candidate sees only 200s, through the fast path and through the regular route."""
    settings = make_settings(db_connect_timeout_seconds=CONNECT_TIMEOUT)
    async with _started(private_pg, settings, "idle-beat") as (app, client, token):
        auth = {"Authorization": f"Bearer {token}"}
        url = "/api/v1/sessions/idle-beat/heartbeat"
        assert (await client.post(url, headers=auth)).status_code == 200
        before = app.heartbeat_fast_path.answered
        await asyncio.to_thread(private_pg.stop)
        await asyncio.to_thread(private_pg.start)
        statuses = [(await client.post(url, headers=auth)).status_code for _ in range(4)]
        fast_answered = app.heartbeat_fast_path.answered - before
        # The regular route (an extra key in the body) after a second restart.
        await asyncio.to_thread(private_pg.stop)
        await asyncio.to_thread(private_pg.start)
        routed = await client.post(url, headers=auth, json={"active": True, "note": "x"})
        statuses.append(routed.status_code)
        # The database down: a fast, well-formed 503 from the fast path itself.
        await asyncio.to_thread(private_pg.stop)
        try:
            down = await client.post(url, headers=auth)
        finally:
            await asyncio.to_thread(private_pg.start)
    report("db_restart_idle_heartbeat", faults=2, requests=5, failed=5 - statuses.count(200))
    assert statuses == [200] * 5, statuses
    assert fast_answered == 4  # every ordinary one answered by the fast path
    assert down.status_code == 503
    assert down.headers["content-type"].startswith("application/problem+json")
    assert down.json()["code"] == "database_unavailable"
    assert down.headers["retry-after"] == "2" and "x-request-id" in down.headers


@contextlib.asynccontextmanager
async def _started(
    private_pg: PrivatePostgres, settings: Any, candidate_id: str
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, str]]:
    """An app on the private server, a client for it, and a started session's token."""
    async with in_process_api(private_pg.url, settings) as api:
        response = await api.client.post(
            "/api/v1/sessions",
            json={"candidate_id": candidate_id, "create_candidate": True},
            headers=api.staff,
        )
        assert response.status_code == 201, response.text
        yield api.app, api.client, response.json()["token"]
