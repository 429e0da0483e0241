"""The webhook outbox and its delivery worker against a real receiver on loopback: signatures,
the body, retries after 500s and timeouts, restarts, giving up, ordering, session.silent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from datetime import timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from invigilator import metrics
from invigilator.api.schemas import SessionOut
from invigilator.store import SessionStore
from support.db import add_candidate, shift_session
from support.waiting import eventually
from support.webhooks import (
    SECRET,
    Received,
    Receiver,
    make_worker,
    outbox,
    readme_verify,
    running,
)


def deliveries(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    # Oldest first by time: on Citus the ids of two workers' shards are not in time order.
    return db.execute(
        "SELECT type, status, attempts, last_status FROM webhook_delivery ORDER BY created_at, id"
    ).fetchall()


def counter(metric: Any, **labels: str) -> float:
    value: float = (metric.labels(**labels) if labels else metric)._value.get()
    return value


async def test_events_are_signed_and_shaped_like_the_api(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    async with running(worker):
        cid = add_candidate(db)
        await store.start(cid, duration_minutes=30)
        await store.save_answers(cid, {"q1": "my private answer"}, 1)
        await store.complete(cid)
        await eventually(lambda: len(receiver.processed) == 2, what="two deliveries")

    verify = readme_verify()
    other = "whsec_" + base64.b64encode(b"another secret, 24+ bytes long").decode()
    started, completed = receiver.requests
    for request in (started, completed):
        headers = request.headers
        assert verify(SECRET, request.body, headers) == request.json
        assert verify(other, request.body, headers) is None
        assert verify(SECRET, request.body + b" ", headers) is None
        assert verify(SECRET, request.body, {**headers, "webhook-id": "another-id"}) is None
        stale = str(int(headers["webhook-timestamp"]) - 600)  # a replay ten minutes later
        assert verify(SECRET, request.body, {**headers, "webhook-timestamp": stale}) is None
        assert headers["Content-Type"] == "application/json"
        assert headers["webhook-id"] == request.json["id"]
        assert headers["webhook-signature"].startswith("v1,")
        assert headers["Invigilator-Event-Type"] == request.json["type"]
        assert "Invigilator-Signature" not in headers and "Invigilator-Event-Id" not in headers
        assert request.json.keys() == {"id", "type", "created_at", "session"}
        assert set(request.json["session"]) == set(SessionOut.model_fields)  # the API's shape
        assert b"my private answer" not in request.body  # no answers unless asked for
    assert [started.json["type"], completed.json["type"]] == [
        "session.started",
        "session.completed",
    ]
    assert started.json["id"] != completed.json["id"]
    session = completed.json["session"]
    assert session["candidate_id"] == cid
    assert session["status"] == "completed" and session["completion_method"] == "manual"
    assert session["remaining_seconds"] == 0 and session["completed_at"].endswith("Z")
    assert started.json["session"]["remaining_seconds"] > 29 * 60
    assert deliveries(db) == [
        ("session.started", "delivered", 1, 200),
        ("session.completed", "delivered", 1, 200),
    ]
    # the environment's secret is never written to the database
    assert db.execute("SELECT secret FROM webhook_endpoint").fetchall() == [(None,)]


async def test_answers_only_for_an_endpoint_that_asks(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    endpoints = outbox(store.pool)
    wants = await endpoints.create_endpoint(
        receiver.url + "?answers",
        event_types=["session.completed"],
        include_answers=True,
        description=None,
    )
    await endpoints.create_endpoint(
        receiver.url, event_types=None, include_answers=False, description=None
    )
    cid = add_candidate(db)
    await store.start(cid)
    await store.save_answers(cid, {"q1": "forty-two"}, 1)
    await store.complete(cid)
    async with running(make_worker(store.pool, store.policy)):
        await eventually(lambda: len(receiver.requests) == 3, what="three deliveries")
    with_answers = [r for r in receiver.requests if "pending_answers" in r.json["session"]]
    assert len(with_answers) == 1
    (request,) = with_answers
    assert request.json["type"] == "session.completed"
    assert request.json["session"]["pending_answers"] == {"q1": "forty-two"}
    assert readme_verify()(wants["secret"], request.body, request.headers)
    # both endpoints got the same event id for the same event (receivers dedupe on it)
    ids = {r.json["id"] for r in receiver.requests if r.json["type"] == "session.completed"}
    assert len(ids) == 1


async def test_retried_after_500s_with_the_same_id(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    answers = iter([500, 503])
    receiver.respond = lambda _: next(answers, 200)
    before = counter(metrics.WEBHOOK_FAILURES, reason="http_500")
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    async with running(worker):
        await store.start(add_candidate(db))
        await eventually(lambda: receiver.processed, what="a delivery after two 5xx")
    assert [r.status for r in receiver.requests] == [500, 503, 200]
    assert len({r.json["id"] for r in receiver.requests}) == 1
    assert [r.headers["Invigilator-Delivery-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert all(readme_verify()(SECRET, r.body, r.headers) for r in receiver.requests)
    assert deliveries(db) == [("session.started", "delivered", 3, 200)]
    assert counter(metrics.WEBHOOK_FAILURES, reason="http_500") == before + 1


async def test_retried_after_a_timeout(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    answers = iter([("hang", 1.0)])
    receiver.respond = lambda _: next(answers, 200)
    before = counter(metrics.WEBHOOK_FAILURES, reason="timeout")
    worker = make_worker(
        store.pool, store.policy, env_url=receiver.url, env_secret=SECRET, timeout=0.3
    )
    async with running(worker):
        await store.start(add_candidate(db))
        await eventually(lambda: deliveries(db)[0][1] == "delivered", what="delivered")
    assert counter(metrics.WEBHOOK_FAILURES, reason="timeout") == before + 1
    assert deliveries(db) == [("session.started", "delivered", 2, 200)]
    assert len({r.json["id"] for r in receiver.requests}) == 1


async def test_restart_mid_retry_delivers_the_same_event_once(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """A worker (a process) stops while a delivery is failing; a new one, with its own pool,
    delivers it: same id, processed once by the deduplicating receiver."""
    receiver.respond = lambda _: 500
    first = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    async with running(first):
        await store.start(add_candidate(db))
        await eventually(lambda: len(receiver.requests) >= 2, what="two failed attempts")
    (row,) = deliveries(db)
    assert row[1] == "pending" and row[2] >= 2

    receiver.respond = lambda _: 200
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as pool:
        second = make_worker(pool, store.policy, env_url=receiver.url, env_secret=SECRET)
        async with running(second):
            await eventually(lambda: deliveries(db)[0][1] == "delivered", what="delivered")
    assert len({r.json["id"] for r in receiver.requests}) == 1
    assert len(receiver.processed) == 1
    assert [r.status for r in receiver.requests][-1] == 200


async def test_a_worker_dying_mid_post_is_covered_by_its_lease(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    answers = iter([("hang", 1.0)])
    receiver.respond = lambda _: next(answers, 200)
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    await worker.sync()
    await store.start(add_candidate(db))
    task = asyncio.create_task(worker.run(asyncio.Event()))
    await eventually(lambda: deliveries(db)[0][2] == 1, what="the first attempt")
    await asyncio.sleep(0.1)
    task.cancel()  # killed mid-POST: nothing was recorded, the lease holds the delivery
    with contextlib.suppress(asyncio.CancelledError):
        await task
    (row,) = deliveries(db)
    assert row[1] == "pending"
    # the lease runs out (time moved, not waited for); another process delivers it
    db.execute("UPDATE webhook_delivery SET next_attempt_at = now()")
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    second = make_worker(pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    async with pool, running(second):
        await eventually(lambda: deliveries(db)[0][1] == "delivered", what="delivered")
    await eventually(lambda: len(receiver.requests) == 2, what="the hung request to finish")
    assert len({r.json["id"] for r in receiver.requests}) == 1  # at least once, same id
    assert len(receiver.processed) == 1


async def test_stopping_lets_the_post_in_flight_finish_and_be_recorded(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """What SIGTERM does (the lifespan sets `stop`): no new claim, the POST in flight ends."""
    receiver.respond = lambda _: ("hang", 0.5)
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    async with running(worker):
        await store.start(add_candidate(db))
        await eventually(lambda: deliveries(db)[0][2] == 1, what="the POST to start")
    # the block waited for the worker: the slow receiver answered and it was recorded
    assert deliveries(db) == [("session.started", "delivered", 1, 200)]
    await store.start(add_candidate(db))
    await asyncio.sleep(0.2)
    assert deliveries(db)[1][1:3] == ("pending", 0)  # nothing claimed after the stop


async def test_given_up_after_max_age(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.respond = lambda _: 500
    before = counter(metrics.WEBHOOK_GIVEN_UP, type="session.started")
    # An hour of max age, and the event moved an hour into the past after its first failed
    # attempt: the next attempt is the one past max age, however slow this machine is.
    worker = make_worker(
        store.pool, store.policy, env_url=receiver.url, env_secret=SECRET, max_age=3600
    )
    async with running(worker):
        await store.start(add_candidate(db))
        await eventually(lambda: deliveries(db)[0][3] == 500, what="the first attempt to fail")
        db.execute(  # invigilator_plus: on Citus an UPDATE takes no STABLE `-` over a column
            "UPDATE webhook_delivery "
            "SET created_at = invigilator_plus(created_at, interval '-1 hour')"
        )
        await eventually(lambda: deliveries(db)[0][1] == "failed", what="given up")
        attempts = len(receiver.requests)
        await asyncio.sleep(0.3)
    assert len(receiver.requests) == attempts  # nothing more once given up
    ((_, _, tried, last_status),) = deliveries(db)
    assert tried == attempts >= 2 and last_status == 500
    assert counter(metrics.WEBHOOK_GIVEN_UP, type="session.started") == before + 1


async def test_per_session_order_and_no_blocking_across_sessions(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """A session's later event waits while an earlier one is retried; other sessions' events
    do not wait for it."""
    stuck, free = add_candidate(db), add_candidate(db)
    failures = {"n": 0}

    def respond(request: Received) -> int:
        if request.json["session"]["candidate_id"] == stuck and failures["n"] < 3:
            failures["n"] += 1
            return 500
        return 200

    receiver.respond = respond
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    await worker.sync()
    for cid in (stuck, free):
        await store.start(cid)
        await store.extend(cid, 5)
        await store.complete(cid)
    async with running(worker):
        await eventually(lambda: len(receiver.processed) == 6, what="six events")

    def seen(cid: str) -> list[tuple[str, int]]:
        return [
            (r.json["type"], r.status)
            for r in receiver.requests
            if r.json["session"]["candidate_id"] == cid
        ]

    assert seen(stuck) == [
        ("session.started", 500),
        ("session.started", 500),
        ("session.started", 500),
        ("session.started", 200),
        ("session.time_extended", 200),
        ("session.completed", 200),
    ]
    assert seen(free) == [
        ("session.started", 200),
        ("session.time_extended", 200),
        ("session.completed", 200),
    ]
    # the free session was done before the stuck one got through
    order = [r.json["session"]["candidate_id"] for r in receiver.requests if r.status == 200]
    assert order.index(stuck) > order.index(free)


async def test_silent_once_per_silence(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """No heartbeat for half the abandon threshold (5 min here) with time left: one
    session.silent per silence, none for a session already due to end."""
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    await worker.sync()
    quiet, gone, chatty = add_candidate(db), add_candidate(db), add_candidate(db)
    for cid in (quiet, gone, chatty):
        await store.start(cid)
        await store.heartbeat(cid)
    shift_session(db, quiet, last_heartbeat=timedelta(minutes=3))
    shift_session(db, gone, last_heartbeat=timedelta(minutes=6))  # due: abandoned, not silent
    assert await worker.scan_silent() == 1
    assert await worker.scan_silent() == 0  # the same silence again: nothing new
    (first,) = db.execute(
        "SELECT event_id, candidate_id FROM webhook_delivery WHERE type = 'session.silent'"
    ).fetchall()
    assert first[1] == quiet

    await store.heartbeat(quiet)  # back, then silent again: a new silence, a new event
    shift_session(db, quiet, last_heartbeat=timedelta(minutes=4))
    assert await worker.scan_silent() == 1
    async with running(worker):
        await eventually(lambda: receiver.types().count("session.silent") == 2, what="two silences")
    silent = [r for r in receiver.requests if r.json["type"] == "session.silent"]
    assert {r.json["session"]["candidate_id"] for r in silent} == {quiet}
    assert len({r.json["id"] for r in silent}) == 2
    assert silent[0].json["id"] == str(first[0])
    assert all(r.json["session"]["status"] == "active" for r in silent)
    assert all(r.json["session"]["remaining_seconds"] > 0 for r in silent)


async def test_psql_statements_enqueue_too(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """The outbox is a trigger: the guide's own SQL, run by hand, produces the same events,
    and a heartbeat produces none."""
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    await worker.sync()
    cid = add_candidate(db)
    db.execute(
        "INSERT INTO test_session (candidate_id, test_duration_minutes) VALUES (%s, 60)", (cid,)
    )
    db.execute("UPDATE test_session SET last_heartbeat = now() WHERE candidate_id = %s", (cid,))
    db.execute("UPDATE test_session SET extra_minutes = 10 WHERE candidate_id = %s", (cid,))
    with db.transaction():
        db.execute(
            "UPDATE test_session SET status = 'completed', completion_method = 'manual', "
            "completed_at = CURRENT_TIMESTAMP WHERE candidate_id = %s",
            (cid,),
        )
        db.execute("UPDATE test_session SET last_activity = now() WHERE candidate_id = %s", (cid,))
    assert [row[0] for row in deliveries(db)] == [
        "session.started",
        "session.time_extended",
        "session.completed",
    ]
    # a rolled-back change leaves nothing in the outbox
    other = add_candidate(db)
    with db.transaction(force_rollback=True):
        db.execute("INSERT INTO test_session (candidate_id) VALUES (%s)", (other,))
    assert len(deliveries(db)) == 3


async def test_environment_endpoint_follows_the_environment(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    await make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET).sync()
    await make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET).sync()
    assert db.execute("SELECT url, active FROM webhook_endpoint").fetchall() == [
        (receiver.url, True)
    ]
    await make_worker(store.pool, store.policy).sync()  # the variable was unset
    assert db.execute("SELECT active FROM webhook_endpoint").fetchall() == [(False,)]
    await store.start(add_candidate(db))
    assert deliveries(db) == []
