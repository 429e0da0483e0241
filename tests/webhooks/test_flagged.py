"""session.flagged: an incident is delivered once, signed, with the session and the incident;
an endpoint may subscribe to it alone."""

from __future__ import annotations

from typing import Any

import psycopg
from pydantic import SecretStr

from support.waiting import eventually
from support.webhooks import SECRET, Receiver, readme_verify, serving


async def test_an_incident_is_delivered_as_session_flagged(
    db_url: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    env = {"webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)}
    async with serving(db_url, **env) as api:
        await api.start("cand-1")
        response = await api.client.post(
            "/api/v1/sessions/cand-1/incidents",
            json={"severity": "medium", "reason_code": "left_camera", "note": "gone 2 min"},
            headers=api.staff,
        )
        assert response.status_code == 201, response.text
        await eventually(
            lambda: receiver.types() == ["session.started", "session.flagged"], what="flagged"
        )
    (request,) = [r for r in receiver.requests if r.json["type"] == "session.flagged"]
    assert readme_verify()(SECRET, request.body, request.headers)
    body = request.json
    assert body["session"]["candidate_id"] == "cand-1" and body["session"]["status"] == "active"
    assert body["incident"]["severity"] == "medium"
    assert body["incident"]["reason_code"] == "left_camera"
    assert body["incident"]["note"] == "gone 2 min"
    assert body["incident"]["actor"].startswith("staff:")


async def test_an_endpoint_may_subscribe_to_session_flagged_alone(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    async with serving(db_url) as api:
        created = await api.client.post(
            "/api/v1/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "event_types": ["session.flagged"]},
            headers=api.staff,
        )
        assert created.status_code == 201, created.text
        await api.start("cand-2")
        await api.client.post(
            "/api/v1/sessions/cand-2/incidents",
            json={"severity": "low", "reason_code": "noise"},
            headers=api.staff,
        )
    assert db.execute("SELECT type FROM webhook_delivery ORDER BY id").fetchall() == [
        ("session.flagged",)
    ]
