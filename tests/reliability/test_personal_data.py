"""Personal data (issue 16): erasing one candidate's session through the staff API and the
CLI, a retention period for answers and timelines, and staff sign-outs that end the sign-in
on the server."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from faults import report

from invigilator import analytics
from invigilator.db import connector
from invigilator.privacy import PrivacyStore
from invigilator.service import Sessions
from invigilator.store import SessionStore
from invigilator.sweeper import Sweeper
from invigilator.webhooks.outbox import Claimed
from invigilator.webhooks.worker import render_body
from support.api import STAFF_KEY, Api, assert_problem, in_process_api, make_settings
from support.cli import run_cli

SECRET_ANSWER = "the candidate's own words 5f1c"


def rows_about(db: psycopg.Connection[Any], candidate_id: str) -> dict[str, int]:
    counts = {}
    for table in ("test_session", "test_session_event", "webhook_delivery"):
        (n,) = db.execute(
            f"SELECT count(*) FROM {table} WHERE candidate_id = %s",
            (candidate_id,),
        ).fetchone() or (0,)
        counts[table] = n
    return counts


def everything(db: psycopg.Connection[Any]) -> str:
    """Every row of every table this service writes, as text: to search for personal data."""
    parts = []
    for table in (
        "test_session",
        "test_session_event",
        "webhook_delivery",
        "invigilator_erasure",
        "invigilator_staff_signout",
    ):
        for (row,) in db.execute(f"SELECT to_jsonb(t)::text FROM {table} t"):
            parts.append(row)
    return "\n".join(parts)


async def a_session_with_history(api: Api, candidate_id: str, answer: str = SECRET_ANSWER) -> str:
    token = (await api.start(candidate_id, sections=["part-1", "part-2"]))["token"]
    assert (
        await api.as_candidate(
            "PATCH",
            candidate_id,
            "answers",
            token,
            json={"answers": {"q1": answer, "q2": 42}, "seq": 1},
        )
    ).status_code == 200
    assert (
        await api.as_candidate("POST", candidate_id, "sections", token, json={"section": "part-1"})
    ).status_code == 200
    assert (
        await api.as_candidate("POST", candidate_id, "events", token, json={"type": "focus_lost"})
    ).status_code == 204
    extended = await api.client.post(
        f"/api/v1/sessions/{candidate_id}/extend",
        json={"minutes": 5, "reason": "a reason naming the candidate"},
        headers=api.staff,
    )
    assert extended.status_code == 200
    return token


async def test_erasure_removes_the_session_and_keeps_an_anonymous_audit_record(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    hook = await api.client.post(
        "/api/v1/webhooks",
        json={"url": "https://receiver.example/hook", "include_answers": True},
        headers=api.staff,
    )
    assert hook.status_code == 201
    only_erasures = await api.client.post(
        "/api/v1/webhooks",
        json={"url": "https://other.example/hook", "event_types": ["session.erased"]},
        headers=api.staff,
    )
    assert only_erasures.status_code == 201
    candidate = "jane.doe+exam@example.com"
    token = await a_session_with_history(api, candidate)
    await a_session_with_history(api, "someone-else", "another candidate's answer")
    before = rows_about(db, candidate)
    assert before["test_session"] == 1 and before["test_session_event"] >= 4
    assert before["webhook_delivery"] >= 2  # session.started, session.time_extended (pending)
    others_before = rows_about(db, "someone-else")

    erased = await api.client.delete(f"/api/v1/sessions/{candidate}", headers=api.staff)
    assert erased.status_code == 200, erased.text
    result = erased.json()
    assert result["answers_removed"] == 2
    assert result["events_removed"] == before["test_session_event"]
    assert result["deliveries_removed"] == before["webhook_delivery"]
    assert result["webhooks_queued"] == 2  # both endpoints subscribe to session.erased
    assert candidate not in erased.text

    assert rows_about(db, candidate) == {
        "test_session": 0,
        "test_session_event": 0,
        "webhook_delivery": 0,
    }
    assert rows_about(db, "someone-else") == others_before  # nobody else's data went
    # What survives names no candidate and holds no answer.
    stored = everything(db)
    assert candidate not in stored, [line for line in stored.splitlines() if candidate in line]
    assert SECRET_ANSWER not in stored
    audit = db.execute(
        "SELECT to_jsonb(e) FROM invigilator_erasure e WHERE erasure_id = %s",
        (result["erasure_id"],),
    ).fetchone()
    assert audit is not None
    assert audit[0]["actor"].startswith("staff:") and audit[0]["session_status"] == "active"
    # The session.erased event: delivered like any other, naming no one.
    rows = db.execute(
        "SELECT id, event_id, type, candidate_id, payload, created_at, endpoint_id"
        " FROM webhook_delivery WHERE type = 'session.erased'"
    ).fetchall()
    assert len(rows) == 2 and {str(r[1]) for r in rows} == {result["erasure_id"]}
    delivery_id, event_id, kind, cid, payload, created_at, endpoint_id = rows[0]
    # keyed by the erasure's own id (migration 0012: Citus needs a key), not by the candidate
    assert str(cid) == result["erasure_id"]
    body = render_body(
        Claimed(
            id=delivery_id,
            event_id=str(event_id),
            type=kind,
            candidate_id="",
            payload=payload,
            created_at=created_at,
            attempts=1,
            endpoint_id=endpoint_id,
            url="https://receiver.example/hook",
            secrets=(),
            from_env=False,
            include_answers=True,
        )
    ).decode()
    sent = json.loads(body)
    assert sent["type"] == "session.erased" and sent["erasure"]["id"] == result["erasure_id"]
    assert "session" not in sent and candidate not in body and SECRET_ANSWER not in body
    log = await api.client.get("/api/v1/webhooks/deliveries", headers=api.staff)
    assert log.status_code == 200
    assert any(
        d["type"] == "session.erased" and d["candidate_id"] is None for d in log.json()["items"]
    )

    # The candidate's token opens nothing now; a second erasure finds nothing.
    state = await api.as_candidate("GET", candidate, "state", token)
    assert_problem(state, 404, "not_found")
    again = await api.client.delete(f"/api/v1/sessions/{candidate}", headers=api.staff)
    assert_problem(again, 404, "not_found")
    # A new session for the same candidate may start afresh (erased is not ended).
    assert (await api.start(candidate))["status"] == "active"
    report(
        "erasure",
        events_removed=result["events_removed"],
        deliveries_removed=result["deliveries_removed"],
        webhooks_queued=result["webhooks_queued"],
        personal_data_left=0,
    )


async def test_erasure_needs_staff_and_a_valid_id(api: Api, db: psycopg.Connection[Any]) -> None:
    token = (await api.start("alice"))["token"]
    before = rows_about(db, "alice")
    for response, status, code in (
        (await api.client.delete("/api/v1/sessions/alice"), 401, "unauthorized"),
        (await api.client.delete("/api/v1/sessions/alice", headers=api.bearer(token)), 401, None),
        (await api.client.delete("/api/v1/sessions/a%20b", headers=api.staff), 422, None),
        (await api.client.delete("/api/v1/sessions/nobody", headers=api.staff), 404, "not_found"),
    ):
        assert response.status_code == status, response.text
        if code:
            assert response.json()["code"] == code
    assert rows_about(db, "alice") == before


def test_the_cli_erases_a_session(db_url: str, db: psycopg.Connection[Any]) -> None:
    db.execute("INSERT INTO candidate (candidate_id) VALUES ('cli-erase-1')")
    db.execute(
        "INSERT INTO test_session (candidate_id, pending_answers, answer_seq)"
        " VALUES ('cli-erase-1', %s, '{\"q1\": 1}')",
        (json.dumps({"q1": SECRET_ANSWER}),),
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("session", "erase", *args, env={"DATABASE_URL": db_url}, timeout=60)

    refused = run("cli-erase-1")  # no --yes, no terminal: not confirmed
    assert refused.returncode == 1 and rows_about(db, "cli-erase-1")["test_session"] == 1
    done = run("cli-erase-1", "--yes", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["answers_removed"] == 1 and result["actor"] == "cli"
    assert rows_about(db, "cli-erase-1")["test_session"] == 0
    assert SECRET_ANSWER not in done.stdout
    missing = run("cli-erase-1", "--yes")
    assert missing.returncode == 1 and "no test session" in missing.stderr
    bad = run("a/b", "--yes")
    assert bad.returncode == 1 and "candidate_id must be" in bad.stderr


# --- retention ------------------------------------------------------------------------------


def seed_ended(
    db: psycopg.Connection[Any], cid: str, ended_days_ago: float, *, status: str = "completed"
) -> None:
    now = datetime.now(UTC)
    end = now - timedelta(days=ended_days_ago)
    start = end - timedelta(minutes=40)
    method = "manual" if status == "completed" else "heartbeat_timeout"
    db.execute("INSERT INTO candidate (candidate_id) VALUES (%s)", (cid,))
    db.execute(
        "INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes, status,"
        " completion_method, completed_at, last_heartbeat, sections_completed, pending_answers,"
        ' answer_seq) VALUES (%s, %s, 60, %s, %s, %s, %s, \'["a", "b"]\', %s, \'{"q1": 1}\')',
        (cid, start, status, method, end, end, json.dumps({"q1": SECRET_ANSWER})),
    )
    for kind, at in (("started", start), ("focus_lost", end - timedelta(minutes=1)), (status, end)):
        db.execute(
            "INSERT INTO test_session_event (candidate_id, type, at) VALUES (%s, %s, %s)",
            (cid, kind, at),
        )


SEED_COUNTS = ("total", "active", "completed", "abandoned", "completion_rate", "by_method")


async def test_retention_removes_old_answers_and_timelines_in_bounded_batches(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    old = [f"old-{i}" for i in range(7)]
    for i, cid in enumerate(old):
        seed_ended(db, cid, 40 + i, status="completed" if i % 3 else "abandoned")
    seed_ended(db, "recent", 5)
    db.execute("INSERT INTO candidate (candidate_id) VALUES ('running')")
    db.execute(
        "INSERT INTO test_session (candidate_id, pending_answers, answer_seq)"
        " VALUES ('running', %s, '{\"q1\": 1}')",
        (json.dumps({"q1": SECRET_ANSWER}),),
    )
    settings = make_settings()
    pool = connector.pool_for(db_url, settings, min_size=1, max_size=2)
    await pool.open()
    try:
        sessions = Sessions(SessionStore(pool, settings.policy()), settings.limits())
        since = datetime.now(UTC) - timedelta(days=90)
        until = datetime.now(UTC) + timedelta(days=1)
        before = await analytics.summary(pool, since, until)

        # Off by default: nothing is removed.
        events = db.execute("SELECT count(*) FROM test_session_event").fetchone()
        assert make_settings().retention() is None
        await Sweeper(sessions, interval=5, batch_size=3).sweep()
        assert db.execute("SELECT count(*) FROM test_session_event").fetchone() == events

        sweeper = Sweeper(sessions, interval=5, batch_size=3, retention=timedelta(days=30))
        batches = []
        privacy = PrivacyStore(pool)
        while True:  # what one pass does, a batch at a time, to count the batches
            batch = await privacy.purge_ended(timedelta(days=30), 3)
            batches.append(batch.sessions)
            if batch.sessions < 3:
                break
        assert batches == [3, 3, 1]
        await sweeper.sweep()  # a pass finds nothing left
        assert sweeper.purged == 0 and sweeper.failures == 0

        purged = db.execute(
            "SELECT candidate_id, pending_answers, answer_seq, purged_at IS NOT NULL,"
            " (SELECT count(*) FROM test_session_event e WHERE e.candidate_id = t.candidate_id)"
            " FROM test_session t ORDER BY candidate_id"
        ).fetchall()
        by_id = {r[0]: r[1:] for r in purged}
        for cid in old:
            assert by_id[cid] == ({}, {}, True, 0), cid
        assert by_id["recent"][0] == {"q1": SECRET_ANSWER} and by_id["recent"][3] >= 3
        assert by_id["running"][0] == {"q1": SECRET_ANSWER}

        after = await analytics.summary(pool, since, until)
        for key in SEED_COUNTS:
            assert after[key] == before[key], key
        assert after["duration_seconds"] == before["duration_seconds"]
        report(
            "retention",
            sessions_purged=len(old),
            batches=batches,
            kept_recent=1,
            kept_running=1,
            analytics_counts_changed=0,
        )
    finally:
        await pool.close()


def test_retention_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from invigilator.config import Settings

    monkeypatch.setenv("INVIGILATOR_RETENTION_DAYS", "180")
    assert Settings().retention() == timedelta(days=180)
    monkeypatch.delenv("INVIGILATOR_RETENTION_DAYS")
    assert Settings().retention() is None


# --- staff sign-out -------------------------------------------------------------------------


def sign_in(client: httpx.AsyncClient) -> Any:
    return client.post(
        "/admin/login",
        content=f"key={STAFF_KEY}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Sec-Fetch-Site": "same-origin",
        },
    )


async def test_signing_out_ends_the_sign_in_in_every_process(db_url: str) -> None:
    """Two app instances on one database stand for two `--workers` processes: a cookie signed
    out through one is refused by the other at once."""
    async with (
        in_process_api(db_url, make_settings()) as first,
        in_process_api(db_url, make_settings()) as second,
    ):
        signed_in = await sign_in(first.client)
        assert signed_in.status_code == 303
        cookie = signed_in.cookies.get("invigilator_staff")
        assert cookie
        jar = {"Cookie": f"invigilator_staff={cookie}"}
        for api in (first, second):
            api.client.cookies.clear()
            ok = await api.client.get("/api/v1/sessions", headers=jar)
            assert ok.status_code == 200, ok.text
        other = await sign_in(second.client)  # a second sign-in, which stays valid
        other_cookie = other.cookies.get("invigilator_staff")
        assert other_cookie and other_cookie != cookie

        first.client.cookies.clear()
        out = await first.client.post(
            "/admin/logout", headers={**jar, "Sec-Fetch-Site": "same-origin"}
        )
        assert out.status_code == 303
        for api in (first, second):
            api.client.cookies.clear()
            refused = await api.client.get("/api/v1/sessions", headers=jar)
            assert_problem(refused, 401, "unauthorized")
            page = await api.client.get("/admin", headers=jar)
            assert "sign in" in page.text.lower()  # the sign-in page, not the dashboard
            still = await api.client.get(
                "/api/v1/sessions", headers={"Cookie": f"invigilator_staff={other_cookie}"}
            )
            assert still.status_code == 200
        # Signing out twice, or with a forged cookie, is harmless.
        again = await first.client.post("/admin/logout", headers=jar)
        assert again.status_code == 303
        forged = await first.client.post(
            "/admin/logout", headers={"Cookie": "invigilator_staff=x.y.z"}
        )
        assert forged.status_code == 303
