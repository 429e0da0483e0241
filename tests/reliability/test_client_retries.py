"""Client retries: a request whose response was lost is sent again. The same answer save,
completion or section twice gives the same result; a completion racing the deadline and the
sweeper yields exactly one outcome, and `completed_at` never changes afterwards."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime
from typing import Any

import psycopg
from faults import report

from invigilator.store import SessionStore
from support.api import Api
from support.db import ANSWERS, SEQS


def row(db: psycopg.Connection[Any], candidate_id: str) -> tuple[Any, ...]:
    found = db.execute(
        "SELECT status, completion_method, completed_at, "
        f"{ANSWERS} AS pending_answers, "
        f"{SEQS} AS answer_seq,"
        "       sections_completed, updated_at FROM test_session WHERE candidate_id = %s",
        (candidate_id,),
    ).fetchone()
    assert found is not None
    return tuple(found)


def terminal_events(db: psycopg.Connection[Any], candidate_id: str) -> int:
    found = db.execute(
        "SELECT count(*) FROM test_session_event"
        " WHERE candidate_id = %s AND type IN ('completed', 'abandoned')",
        (candidate_id,),
    ).fetchone()
    assert found is not None
    return int(found[0])


WITHOUT_CLOCK = {"server_now", "remaining_seconds", "updated_at", "last_activity"}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal responses, apart from the clock a retry naturally reads later."""
    return {k: v for k, v in a.items() if k not in WITHOUT_CLOCK} == {
        k: v for k, v in b.items() if k not in WITHOUT_CLOCK
    }


async def test_the_same_save_twice_gives_the_same_result(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice"))["token"]
    body = {"answers": {"q1": "first", "q2": [1, 2]}, "seq": 7}
    first = await api.as_candidate("PATCH", "alice", "answers", token, json=body)
    after_first = row(db, "alice")[3:5]
    again = await api.as_candidate("PATCH", "alice", "answers", token, json=body)
    assert first.status_code == again.status_code == 200
    assert same(first.json(), again.json())
    assert again.json()["applied"] == ["q1", "q2"]  # the client may forget both either way
    assert row(db, "alice")[3:5] == after_first
    # A retry arriving after a newer save does not undo it.
    newer = {"answers": {"q1": "second"}, "seq": 8}
    assert (await api.as_candidate("PATCH", "alice", "answers", token, json=newer)).is_success
    late = await api.as_candidate("PATCH", "alice", "answers", token, json=body)
    assert late.json()["superseded"] == ["q1"] and late.json()["applied"] == ["q2"]
    assert row(db, "alice")[3] == {"q1": "second", "q2": [1, 2]}


async def test_the_same_completion_twice_gives_the_same_outcome(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice"))["token"]
    first = await api.as_candidate("POST", "alice", "complete", token)
    stored = row(db, "alice")
    again = await api.as_candidate("POST", "alice", "complete", token)
    assert first.status_code == again.status_code == 200
    assert first.json()["already_ended"] is False and again.json()["already_ended"] is True
    keys = ("status", "completion_method", "completed_at", "pending_answers")
    assert [first.json()[k] for k in keys] == [again.json()[k] for k in keys]
    assert row(db, "alice") == stored  # not even updated_at moved
    assert terminal_events(db, "alice") == 1


async def test_the_same_section_twice_gives_the_same_result(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    token = (await api.start("alice", sections=["reading", "writing"]))["token"]
    body = {"section": "reading"}
    first = await api.as_candidate("POST", "alice", "sections", token, json=body)
    again = await api.as_candidate("POST", "alice", "sections", token, json=body)
    assert first.status_code == again.status_code == 200
    assert same(first.json(), again.json())
    assert again.json()["sections_completed"] == ["reading"]
    events = db.execute(
        "SELECT count(*) FROM test_session_event WHERE type = 'section_completed'"
    ).fetchone()
    assert events == (1,)


RACERS = 24


async def test_completion_racing_the_deadline_and_the_sweeper_ends_once(
    api: Api, store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    """Deadlines land around the moment the completions and the sweeper passes arrive (some
    well before, some well after, most within a quarter second): whoever gets there first
    decides, once, and nothing moves `completed_at` afterwards."""
    rng = random.Random(7)
    tokens: dict[str, str] = {}
    offsets: dict[str, float] = {}
    for i in range(RACERS):
        cid = f"race-{i}"
        tokens[cid] = (await api.start(cid, duration_minutes=1))["token"]
        offsets[cid] = -5.0 if i < 3 else 30.0 if i < 6 else rng.uniform(0.0, 0.4)
    with db.cursor() as cur:  # each deadline (start + 1 minute) lands `offset` s from now
        cur.executemany(
            "UPDATE test_session SET test_start_time = now() - interval '1 minute'"
            " + make_interval(secs => %s), last_heartbeat = now() WHERE candidate_id = %s",
            [(offset, cid) for cid, offset in offsets.items()],
        )

    first_answers: dict[str, dict[str, Any]] = {}

    async def candidate(cid: str) -> None:
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        response = await api.as_candidate("POST", cid, "complete", tokens[cid])
        assert response.status_code == 200, response.text
        first_answers[cid] = response.json()
        retry = await api.as_candidate("POST", cid, "complete", tokens[cid])  # lost response
        assert retry.json()["already_ended"] is True
        assert retry.json()["completed_at"] == response.json()["completed_at"]

    async def sweeper() -> None:
        for _ in range(30):
            await store.finalize_due(500)
            await asyncio.sleep(0.01)

    await asyncio.gather(sweeper(), sweeper(), *(candidate(cid) for cid in tokens))

    outcomes: Counter[str] = Counter()
    for cid in tokens:
        status, method, completed_at, *_ = row(db, cid)
        deadline = db.execute(
            "SELECT deadline FROM test_session WHERE candidate_id = %s", (cid,)
        ).fetchone()
        assert deadline is not None
        assert terminal_events(db, cid) == 1  # exactly one outcome
        answered = first_answers[cid]
        assert (answered["status"], answered["completion_method"]) == (status, method)
        assert datetime.fromisoformat(answered["completed_at"]) == completed_at
        if method == "manual":
            assert completed_at < deadline[0]  # submitted in time
        else:
            assert (status, method, completed_at) == ("completed", "timer_expired", deadline[0])
        outcomes[method] += 1
    assert outcomes["manual"] >= 3 and outcomes["timer_expired"] >= 3, outcomes

    # Afterwards nothing moves it: candidate retries, sweeps, staff ending it, an extension.
    before = {cid: row(db, cid) for cid in tokens}
    await store.finalize_due(500)
    for cid in tokens:
        await api.as_candidate("POST", cid, "complete", tokens[cid])
        await api.as_candidate("POST", cid, "heartbeat", tokens[cid])
        await api.client.post(
            f"/api/v1/sessions/{cid}/end", json={"outcome": "terminate"}, headers=api.staff
        )
        extend = await api.client.post(
            f"/api/v1/sessions/{cid}/extend", json={"minutes": 10}, headers=api.staff
        )
        assert extend.status_code == 409
    assert {cid: row(db, cid) for cid in tokens} == before
    report("completion_race", sessions=RACERS, **{k: v for k, v in outcomes.items()})
