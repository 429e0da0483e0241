"""Webhooks through the service: a session completed through the API is delivered exactly once,
signed, across a receiver outage and a service restart; the staff API for endpoints and the log."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from invigilator.api.app import create_app
from invigilator.domain import ConfigurationError
from support.api import assert_problem, make_settings
from support.waiting import eventually
from support.webhooks import SECRET, Receiver, readme_verify, serving


def delivery_rows(db: psycopg.Connection[Any], type_: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT status, attempts FROM webhook_delivery WHERE type = %s", (type_,)
    ).fetchall()


async def test_completion_is_delivered_once_across_an_outage_and_a_restart(
    db_url: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    env = {"webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)}
    async with serving(db_url, **env) as api:
        token = (await api.start("cand-1", duration_minutes=30))["token"]
        await eventually(lambda: receiver.types() == ["session.started"], what="started")
        save = await api.as_candidate(
            "PATCH", "cand-1", "answers", token, json={"answers": {"q1": "a secret"}, "seq": 1}
        )
        assert save.status_code == 200
        receiver.stop()  # the recruiting app is down
        done = await api.as_candidate("POST", "cand-1", "complete", token)
        assert done.status_code == 200  # the candidate is never held up by webhooks
        await eventually(
            lambda: delivery_rows(db, "session.completed")[0][1] >= 2, what="failed attempts"
        )
    # the service is down too; the delivery waits in the outbox
    assert delivery_rows(db, "session.completed")[0][0] == "pending"
    receiver.start()  # back on the same port
    async with serving(db_url, **env) as api:
        await eventually(
            lambda: delivery_rows(db, "session.completed")[0][0] == "delivered", what="delivery"
        )
        log = await api.client.get(
            "/api/v1/webhooks/deliveries", params={"candidate_id": "cand-1"}, headers=api.staff
        )
    completed = [r for r in receiver.requests if r.json["type"] == "session.completed"]
    assert len(completed) == 1  # refused connections never reached it; one POST got through
    (request,) = completed
    assert readme_verify()(SECRET, request.body, request.headers)
    session = request.json["session"]
    assert session["candidate_id"] == "cand-1" and session["completion_method"] == "manual"
    assert "pending_answers" not in session and b"a secret" not in request.body
    assert list(receiver.processed) == [r.json["id"] for r in receiver.requests]
    items = log.json()["items"]
    assert [(i["type"], i["status"]) for i in items] == [
        ("session.completed", "delivered"),
        ("session.started", "delivered"),
    ]
    assert items[0]["attempts"] >= 3 and items[0]["event_id"] == request.json["id"]


async def test_staff_manage_endpoints_and_read_the_log(
    db_url: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    async with serving(db_url) as api:
        assert_problem(await api.client.get("/api/v1/webhooks"), 401, "unauthorized")
        bad = await api.client.post(
            "/api/v1/webhooks", json={"url": "ftp://example.test/x"}, headers=api.staff
        )
        assert_problem(bad, 422, "validation_error")
        unknown = await api.client.post(
            "/api/v1/webhooks",
            json={"url": receiver.url, "event_types": ["session.exploded"]},
            headers=api.staff,
        )
        assert_problem(unknown, 422, "validation_error")

        created = await api.client.post(
            "/api/v1/webhooks",
            json={"url": receiver.url, "event_types": ["session.completed"]},
            headers=api.staff,
        )
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_")
        listed = (await api.client.get("/api/v1/webhooks", headers=api.staff)).json()
        assert [e["id"] for e in listed] == [endpoint["id"]]
        assert "secret" not in listed[0]

        token = (await api.start("cand-2"))["token"]
        await api.as_candidate("POST", "cand-2", "complete", token)
        await eventually(lambda: receiver.processed, what="the completed event")
        (request,) = receiver.requests  # the filter: no session.started
        assert request.json["type"] == "session.completed"
        assert readme_verify()(endpoint["secret"], request.body, request.headers)

        async def delivered() -> list[str]:
            page = await api.client.get(
                "/api/v1/webhooks/deliveries", params={"status": "delivered"}, headers=api.staff
            )
            return [i["type"] for i in page.json()["items"]]

        # the receiver saw it before the worker heard its answer and recorded it
        assert await eventually(delivered, what="the log") == ["session.completed"]

        gone = await api.client.delete(f"/api/v1/webhooks/{endpoint['id']}", headers=api.staff)
        assert gone.status_code == 204
        again = await api.client.delete(f"/api/v1/webhooks/{endpoint['id']}", headers=api.staff)
        assert_problem(again, 404, "not_found")
        assert (await api.client.get("/api/v1/webhooks", headers=api.staff)).json() == []
    assert db.execute("SELECT count(*) FROM webhook_endpoint WHERE active").fetchone() == (0,)


async def test_the_environment_endpoint_cannot_be_deleted_through_the_api(
    db_url: str, receiver: Receiver
) -> None:
    env = {"webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)}
    async with serving(db_url, **env) as api:
        (endpoint,) = (await api.client.get("/api/v1/webhooks", headers=api.staff)).json()
        assert endpoint["from_env"] and endpoint["url"] == receiver.url
        refused = await api.client.delete(f"/api/v1/webhooks/{endpoint['id']}", headers=api.staff)
        assert_problem(refused, 403, "forbidden")


@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [
        ("http://127.0.0.1:9/hooks", None, "INVIGILATOR_WEBHOOK_SECRET must be set"),
        ("ftp://127.0.0.1/hooks", SecretStr(SECRET), "must be an http:// or https:// URL"),
    ],
)
def test_a_webhook_misconfiguration_stops_the_start(
    url: str, secret: SecretStr | None, message: str
) -> None:
    settings = make_settings(webhook_url=url, webhook_secret=secret)
    with pytest.raises(ConfigurationError, match=message):  # before anything connects or starts
        create_app(settings, database_url="postgresql://127.0.0.1:9/none")
