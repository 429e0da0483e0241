"""A store operation chosen as a deadlock's victim runs once more (connector.retried_on_deadlock):
the database rolled it back whole, so the second run starts afresh. On Citus a multi-shard
sweep can deadlock with a staff control or a submit (docs/scaling.md); here a real deadlock on
one server shows the translation, and a stand-in operation the retry."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from invigilator.db.connector import UNAVAILABLE, Deadlocked, retried_on_deadlock, translate_errors
from invigilator.domain import DatabaseUnavailable
from support.db import add_candidate


def test_a_deadlock_is_translated_to_a_retryable_unavailable(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    first, second = add_candidate(db), add_candidate(db)
    lock = "SELECT candidate_id FROM candidate WHERE candidate_id = %s FOR UPDATE"
    errors: list[BaseException] = []
    both_hold = threading.Barrier(2)

    def cross(mine: str, theirs: str) -> None:
        with psycopg.connect(db_url) as conn:
            conn.execute("SET deadlock_timeout = '50ms'")
            try:
                with translate_errors(), conn.transaction():
                    conn.execute(lock, (mine,))
                    both_hold.wait()
                    conn.execute(lock, (theirs,))
            except DatabaseUnavailable as exc:
                errors.append(exc)

    runs = [
        threading.Thread(target=cross, args=(first, second)),
        threading.Thread(target=cross, args=(second, first)),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert len(errors) == 1, errors  # one victim; the other committed
    assert isinstance(errors[0], Deadlocked)
    assert isinstance(errors[0].__cause__, psycopg.errors.DeadlockDetected)


async def test_a_victim_runs_once_more_and_a_second_deadlock_is_a_503() -> None:
    calls: list[int] = []

    @retried_on_deadlock
    async def operation(deadlocks: int) -> str:
        calls.append(1)
        if len(calls) <= deadlocks:
            raise Deadlocked(UNAVAILABLE)
        return "done"

    assert await operation(1) == "done"
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(Deadlocked):
        await operation(2)
    assert len(calls) == 2  # once more, not again and again
