"""docs/deploy.md's least-privilege GRANTs, run as written on a migrated database: the whole
service (API, sweeper, webhook worker, metrics, `serve`'s start-up upgrade) works on a role
that has only those, and that role can change no schema."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from invigilator.db import migrate
from invigilator.db.check import check
from support.waiting import eventually
from support.webhooks import SECRET, Receiver, serving

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def documented_grants(role: str, database: str) -> list[str]:
    text = DEPLOY.read_text("utf-8")
    block = text.split("-- least-privilege grants", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    block = re.sub(r"\binvigilator_app\b", role, block)
    block = block.replace("ON DATABASE invigilator ", f'ON DATABASE "{database}" ')
    statements = [s.strip() for s in block.split(";") if s.strip()]
    assert len(statements) >= 8
    return statements


@pytest.fixture
def app_role(db_url: str) -> Any:
    """A login role with exactly the documented grants; dropped afterwards."""
    role = f"invigilator_app_{uuid.uuid4().hex[:8]}"
    database = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as admin:
        for statement in documented_grants(role, str(database)):
            admin.execute(statement)  # type: ignore[arg-type]
    try:
        yield make_conninfo(db_url, user=role, password="change-me")
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f'DROP OWNED BY "{role}"')  # type: ignore[arg-type]
            admin.execute(f'DROP ROLE "{role}"')  # type: ignore[arg-type]


async def test_the_documented_grants_are_enough_and_no_more(
    app_role: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    assert migrate.upgrade(app_role) == []  # what `serve` does at start: nothing, no error
    assert all(f.ok for f in check(app_role)), [f for f in check(app_role) if not f.ok]
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": SecretStr(SECRET),
        "sweeper_enabled": True,
        "sweep_interval_seconds": 0.1,
    }
    async with serving(app_role, **settings) as api:
        token = (await api.start("lp-1", sections=["a"]))["token"]
        for method, path, body in [
            ("POST", "heartbeat", {"active": True}),
            ("POST", "sections", {"section": "a"}),
            ("PATCH", "answers", {"answers": {"q": 1}, "seq": 1}),
            ("POST", "events", {"type": "focus_lost"}),
            ("POST", "complete", None),
        ]:
            response = await api.as_candidate(method, "lp-1", path, token, json=body)
            assert response.status_code in (200, 204), (path, response.text)
        await api.start("lp-2", duration_minutes=1)
        extended = await api.client.post(
            "/api/v1/sessions/lp-2/extend", json={"minutes": 5}, headers=api.staff
        )
        assert extended.status_code == 200
        db.execute(  # the deadline passes: the sweeper (as the app role) ends it
            "UPDATE test_session SET test_start_time = now() - interval '2 hours', "
            "last_heartbeat = now() "
            "WHERE candidate_id = 'lp-2'"
        )
        await eventually(
            lambda: (
                db.execute("SELECT status FROM test_session WHERE candidate_id = 'lp-2'").fetchone()
                == ("completed",)
            ),
            what="the sweeper",
        )
        token = (await api.start("lp-3"))["token"]
        saved = await api.as_candidate(
            "PATCH", "lp-3", "answers", token, json={"answers": {"q": "kept"}, "seq": 1}
        )
        assert saved.status_code == 200, saved.text
        db.execute(  # the mirror's delay passes: the sweeper (as the app role) refreshes it
            "UPDATE test_session_answer_unsynced SET since = now() - interval '1 hour'"
        )
        await eventually(
            lambda: (
                db.execute(
                    "SELECT pending_answers FROM test_session WHERE candidate_id = 'lp-3'"
                ).fetchone()
                == ({"q": "kept"},)
            ),
            what="the sweeper's refresh of pending_answers",
        )
        await eventually(  # lp-2 started 2 hours ago: the sweeper rolls its quarter hour up
            lambda: (
                db.execute(
                    "SELECT count(*) FROM test_session_rollup r JOIN test_session t"
                    " ON r.bucket = test_session_rollup_bucket(t.test_start_time)"
                    " WHERE t.candidate_id = 'lp-2'"
                ).fetchone()
                == (1,)
            ),
            what="the sweeper's report rollup",
        )
        await eventually(lambda: len(receiver.processed) == 6, what="six webhooks")
        created = await api.client.post(
            "/api/v1/webhooks", json={"url": receiver.url + "/2"}, headers=api.staff
        )
        assert created.status_code == 201
        assert (await api.client.get("/metrics", headers=api.staff)).status_code == 200
        log = await api.client.get("/api/v1/webhooks/deliveries", headers=api.staff)
        assert log.status_code == 200
    assert sorted(receiver.types()) == sorted(
        [
            "session.started",
            "session.completed",
            "session.started",
            "session.time_extended",
            "session.completed",
            "session.started",
        ]
    )
    with psycopg.connect(app_role, autocommit=True) as conn:
        for statement in (
            "CREATE TABLE intruder (x int)",
            "DROP TABLE test_session_event",
            "DELETE FROM test_session",
            "TRUNCATE webhook_delivery",
            "ALTER TABLE test_session DISABLE TRIGGER USER",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]
