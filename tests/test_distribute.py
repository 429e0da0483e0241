"""`invigilator db distribute` and `db verify`'s distribution report (docs/scaling.md).

On plain PostgreSQL (CI) the command refuses in one line and verify says "not distributed".
In Citus mode (INVIGILATOR_TEST_CITUS_WORKERS, tests/conftest.py) every test database is
already distributed, so the same tests check that a second `db distribute` changes nothing
and that verify finds the planned placement.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import psycopg

from invigilator.db import distribute, verify
from invigilator.db.connector import constraint_name
from invigilator.store import SessionStore
from invigilator.webhooks.outbox import WebhookStore
from support.cli import run_cli
from support.db import CITUS_WORKERS, add_candidate
from support.webhooks import BOX


def test_distribute_refuses_without_citus_or_changes_nothing_when_distributed(db_url: str) -> None:
    result = run_cli("db", "distribute", db_url=db_url)
    if CITUS_WORKERS:
        assert result.returncode == 0, result.stderr
        assert "already distributed" in result.stdout
        return
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: this database has no citus extension: `db distribute` needs a Citus "
        "coordinator (CREATE EXTENSION citus, and worker nodes added)"
    ], result.stderr


def test_verify_reports_whether_the_database_is_distributed(db: psycopg.Connection[Any]) -> None:
    checks = {c.name: c for c in verify.verify(db)}
    assert checks["distributed"].ok
    if not CITUS_WORKERS:
        assert checks["distributed"].detail.startswith("no: plain PostgreSQL")
        return
    for p in distribute.PLAN:
        assert checks[f"{p.table} {p.kind}"].ok, checks[f"{p.table} {p.kind}"].detail
    state = distribute.inspect(db)
    assert state.distributed and not state.problems()


def _error(constraint: str | None, message: str) -> Any:
    diag = SimpleNamespace(constraint_name=constraint, message_primary=message)
    return SimpleNamespace(diag=diag)


def test_constraint_names_survive_citus_error_messages() -> None:
    # As Citus 13.2 relays a worker's error: no constraint_name, the shard's names in the text.
    fk = 'insert or update on table "test_session_102046" violates foreign key constraint '
    fk += '"test_session_candidate_fk_102046"'
    assert constraint_name(_error(None, fk)) == "test_session_candidate_fk"
    check = 'new row for relation "test_session_102047" violates check constraint '
    check += '"test_session_duration_range"'
    assert constraint_name(_error(None, check)) == "test_session_duration_range"
    # Plain PostgreSQL: the field, as it is.
    assert constraint_name(_error("test_session_candidate_fk", fk)) == "test_session_candidate_fk"
    assert constraint_name(_error(None, "no constraint here")) == ""


async def test_the_two_step_claim_leases_each_delivery_once_in_order(
    store: SessionStore, db: psycopg.Connection[Any]
) -> None:
    # The claim a distributed outbox uses (pick, then lease what is still due), forced here so
    # CI runs it on plain PostgreSQL too.
    outbox = WebhookStore(store.pool, BOX)
    await outbox.create_endpoint(
        "http://127.0.0.1:9/hook", event_types=None, include_answers=False, description=None
    )
    outbox._sharded = True
    first, second = add_candidate(db), add_candidate(db)
    await store.start(first)
    await store.start(second)
    # The guide's own UPDATE (the trigger enqueues it too), which also runs on Citus.
    db.execute(
        "UPDATE test_session SET status = 'completed', completion_method = 'manual', "
        "completed_at = now() WHERE candidate_id = %s",
        (first,),
    )
    lease = timedelta(seconds=30)
    claimed = await outbox.claim(10, lease, env_secret_known=True)
    # Per session only the oldest pending delivery is due: `first`'s completion waits.
    assert sorted((c.candidate_id, c.type) for c in claimed) == sorted(
        [(first, "session.started"), (second, "session.started")]
    )
    # Oldest first: by time, not id (on Citus each node hands out ids of its own range).
    assert [c.created_at for c in claimed] == sorted(c.created_at for c in claimed)
    assert await outbox.claim(10, lease, env_secret_known=True) == []  # leased
    again = await asyncio.gather(*(outbox.claim(10, lease, env_secret_known=True) for _ in "ab"))
    assert again == [[], []]
    await outbox.delivered(next(c for c in claimed if c.candidate_id == first), 200)
    (completed,) = await outbox.claim(10, lease, env_secret_known=True)
    assert (completed.candidate_id, completed.type) == (first, "session.completed")
