"""Standard Webhooks: deliveries verified by the spec's own library, secret rotation (both
signatures while the old one is kept), 410 Gone turning an endpoint off, the staff retry of a
failed delivery, and endpoint secrets encrypted at rest under a key from the environment."""

from __future__ import annotations

import base64
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from invigilator.api.app import create_app
from invigilator.domain import ConfigurationError
from invigilator.store import SessionStore
from invigilator.webhooks.vault import SecretBox, new_secret, secret_problem
from support.api import assert_problem, make_settings
from support.db import add_candidate
from support.waiting import eventually
from support.webhooks import (
    SECRET,
    Receiver,
    make_worker,
    outbox,
    readme_verify,
    running,
    serving,
)

OLD = "whsec_" + base64.b64encode(b"the old secret, still 32 bytes!!").decode()


def verifies(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def test_new_secrets_are_spec_valid() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret_problem(secret) is None
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert secret_problem("whsec_" + base64.urlsafe_b64encode(b"\xfb" * 32).decode()[:-1])
    assert secret_problem("no-prefix") == "must start with whsec_"
    assert "24 to 64 bytes" in (
        secret_problem("whsec_" + base64.b64encode(b"short").decode()) or ""
    )


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("example-webhook-secret-0123456789", "must start with whsec_"),
        ("whsec_not_base64-at-all", "standard base64"),
        (f"{SECRET} whsec_c2hvcnQ=", "secret 2"),
    ],
)
def test_a_secret_receivers_cannot_use_stops_the_start(secret: str, message: str) -> None:
    settings = make_settings(webhook_url="http://127.0.0.1:9/h", webhook_secret=SecretStr(secret))
    with pytest.raises(ConfigurationError, match=message) as raised:
        create_app(settings, database_url="postgresql://127.0.0.1:9/none")
    assert secret not in str(raised.value)  # never echoed


def test_a_bad_encryption_key_stops_the_start() -> None:
    settings = make_settings(webhook_encryption_key=[SecretStr("not-a-fernet-key")])
    with pytest.raises(ConfigurationError, match="key 1 is not a Fernet key") as raised:
        create_app(settings, database_url="postgresql://127.0.0.1:9/none")
    assert "not-a-fernet-key" not in str(raised.value)


async def test_environment_rotation_sends_both_signatures(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """INVIGILATOR_WEBHOOK_SECRET="new old": a receiver holding either one accepts."""
    worker = make_worker(
        store.pool, store.policy, env_url=receiver.url, env_secret=f"{SECRET}  {OLD}"
    )
    async with running(worker):
        await store.start(add_candidate(db))
        await eventually(lambda: receiver.processed, what="a delivery")
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verifies(SECRET, request.body, request.headers)
    assert verifies(OLD, request.body, request.headers)
    assert not verifies(new_secret(), request.body, request.headers)


async def test_staff_rotate_a_secret_and_the_old_one_signs_until_it_expires(
    db_url: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    async with serving(db_url) as api:
        created = await api.client.post(
            "/api/v1/webhooks", json={"url": receiver.url}, headers=api.staff
        )
        endpoint = created.json()
        first = endpoint["secret"]
        assert secret_problem(first) is None and endpoint["previous_secret_expires_at"] is None

        rotated = await api.client.post(
            f"/api/v1/webhooks/{endpoint['id']}/rotate-secret", headers=api.staff
        )
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()["secret"]
        assert second != first and secret_problem(second) is None
        assert rotated.json()["previous_secret_expires_at"] is not None

        token = (await api.start("rot-1"))["token"]
        await eventually(lambda: receiver.processed, what="session.started")
        (started,) = receiver.requests
        # both signatures: receivers on either secret accept, through the README's snippet too
        assert readme_verify()(first, started.body, started.headers) == started.json
        assert readme_verify()(second, started.body, started.headers) == started.json

        # the old secret's time is up (time moved, not waited for): only the new one signs
        db.execute("UPDATE webhook_endpoint SET previous_secret_expires_at = now()")
        await api.as_candidate("POST", "rot-1", "complete", token)
        await eventually(lambda: len(receiver.processed) == 2, what="session.completed")
        completed = receiver.requests[-1]
        assert len(completed.headers["webhook-signature"].split(" ")) == 1
        assert verifies(second, completed.body, completed.headers)
        assert not verifies(first, completed.body, completed.headers)

        # no overlap asked for: the old one stops at once
        third = (
            await api.client.post(
                f"/api/v1/webhooks/{endpoint['id']}/rotate-secret",
                json={"previous_valid_hours": 0},
                headers=api.staff,
            )
        ).json()
        assert third["previous_secret_expires_at"] is None
        assert db.execute("SELECT previous_secret_ciphertext FROM webhook_endpoint").fetchone() == (
            None,
        )

        missing = await api.client.post("/api/v1/webhooks/999/rotate-secret", headers=api.staff)
        assert_problem(missing, 404, "not_found")
        bad = await api.client.post(
            f"/api/v1/webhooks/{endpoint['id']}/rotate-secret",
            json={"previous_valid_hours": -1},
            headers=api.staff,
        )
        assert_problem(bad, 422, "validation_error")


async def test_the_environment_secret_is_not_rotated_through_the_api(
    db_url: str, receiver: Receiver
) -> None:
    env = {"webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)}
    async with serving(db_url, **env) as api:
        (endpoint,) = (await api.client.get("/api/v1/webhooks", headers=api.staff)).json()
        refused = await api.client.post(
            f"/api/v1/webhooks/{endpoint['id']}/rotate-secret", headers=api.staff
        )
        assert_problem(refused, 403, "forbidden")
        assert "INVIGILATOR_WEBHOOK_SECRET" in refused.json()["detail"]


async def test_410_gone_turns_the_endpoint_off(
    db_url: str, store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.respond = lambda _: 410
    endpoint = await outbox(store.pool).create_endpoint(
        receiver.url, event_types=None, include_answers=False, description=None
    )
    cid = add_candidate(db)
    await store.start(cid)
    await store.complete(cid)  # waits behind session.started (per-session order)
    async with running(make_worker(store.pool, store.policy)):
        await eventually(
            lambda: db.execute("SELECT NOT active FROM webhook_endpoint").fetchone() == (True,),
            what="the endpoint turned off",
        )
    assert len(receiver.requests) == 1  # never tried again, the later event not sent
    rows = db.execute(
        "SELECT status, last_status FROM webhook_delivery ORDER BY created_at, id"
    ).fetchall()
    assert rows == [("failed", 410), ("failed", None)]
    await store.start(add_candidate(db))  # nothing more is enqueued for it
    assert db.execute("SELECT count(*) FROM webhook_delivery").fetchone() == (2,)

    async with serving(db_url) as api:
        (listed,) = (await api.client.get("/api/v1/webhooks", headers=api.staff)).json()
        assert listed["id"] == endpoint["id"] and not listed["active"]
        assert listed["disabled_at"] and "410" in listed["disabled_reason"]
        # a delivery of a turned-off endpoint cannot be retried; removing it still works
        (first_id,) = db.execute("SELECT min(id) FROM webhook_delivery").fetchone() or (0,)
        refused = await api.client.post(
            f"/api/v1/webhooks/deliveries/{first_id}/retry", headers=api.staff
        )
        assert_problem(refused, 409, "endpoint_inactive")
        removed = await api.client.delete(f"/api/v1/webhooks/{endpoint['id']}", headers=api.staff)
        assert removed.status_code == 204
        assert (await api.client.get("/api/v1/webhooks", headers=api.staff)).json() == []


async def test_the_environment_endpoint_stays_off_after_410_until_its_url_changes(
    store: SessionStore, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.respond = lambda _: 410
    worker = make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET)
    async with running(worker):
        await store.start(add_candidate(db))
        await eventually(
            lambda: db.execute("SELECT NOT active FROM webhook_endpoint").fetchone() == (True,),
            what="turned off",
        )
    await make_worker(store.pool, store.policy, env_url=receiver.url, env_secret=SECRET).sync()
    assert db.execute("SELECT active FROM webhook_endpoint").fetchone() == (False,)  # a restart
    moved = receiver.url + "?v2"
    await make_worker(store.pool, store.policy, env_url=moved, env_secret=SECRET).sync()
    assert db.execute("SELECT active, disabled_at FROM webhook_endpoint").fetchone() == (
        True,
        None,
    )


async def test_staff_retry_a_failed_delivery(
    db_url: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.respond = lambda _: 500
    settings = {"webhook_max_age_seconds": 0.3}  # gives up after a try or two
    async with serving(
        db_url, webhook_url=receiver.url, webhook_secret=SecretStr(SECRET), **settings
    ) as api:
        await api.start("retry-1")
        failed = await eventually(
            lambda: db.execute(
                "SELECT id, attempts FROM webhook_delivery WHERE status = 'failed'"
            ).fetchone(),
            what="given up",
        )
        delivery_id, attempts = failed
        receiver.respond = lambda _: 200
        retried = await api.client.post(
            f"/api/v1/webhooks/deliveries/{delivery_id}/retry", headers=api.staff
        )
        assert retried.status_code == 202, retried.text
        assert retried.json()["id"] == delivery_id and retried.json()["status"] == "pending"
        # the receiver has it before the worker has heard its answer and recorded it
        await eventually(
            lambda: (
                db.execute(
                    "SELECT status, attempts FROM webhook_delivery WHERE id = %s", (delivery_id,)
                ).fetchone()
                == ("delivered", attempts + 1)
            ),
            what="delivered on the retry",
        )
        (last,) = receiver.processed.values()
        assert last.json["id"] == receiver.requests[0].json["id"]  # the same webhook-id
        assert verifies(SECRET, last.body, last.headers)  # signed anew, so not too old

        again = await api.client.post(
            f"/api/v1/webhooks/deliveries/{delivery_id}/retry", headers=api.staff
        )
        assert_problem(again, 409, "delivery_not_failed")
        missing = await api.client.post(
            "/api/v1/webhooks/deliveries/999999/retry", headers=api.staff
        )
        assert_problem(missing, 404, "not_found")
        nobody = await api.client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/retry")
        assert_problem(nobody, 401, "unauthorized")


async def test_secrets_are_encrypted_at_rest_and_follow_the_key(
    db_url: str, db: psycopg.Connection[Any], receiver: Receiver
) -> None:
    first_key, second_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    # an endpoint stored in clear by migration 0002, before encryption existed
    legacy = new_secret()
    db.execute(
        "INSERT INTO webhook_endpoint (url, secret, event_types) "
        "VALUES (%s, %s, '{session.completed}')",
        (receiver.url + "?legacy", legacy),
    )
    # unset key: derived from INVIGILATOR_SECRET_KEY
    async with serving(db_url) as api:
        created = (
            await api.client.post(
                "/api/v1/webhooks",
                json={"url": receiver.url, "event_types": ["session.started"]},
                headers=api.staff,
            )
        ).json()
    stored = dict(db.execute("SELECT url, secret_ciphertext FROM webhook_endpoint").fetchall())
    dump = str(db.execute("SELECT * FROM webhook_endpoint").fetchall())
    assert created["secret"] not in dump and legacy not in dump  # the 0002 one was encrypted too
    assert db.execute(
        "SELECT count(*) FROM webhook_endpoint WHERE secret IS NOT NULL"
    ).fetchone() == (0,)

    # a key of one's own (the derived one still decrypts): at the start every secret moves
    # to it; then a second key first, the first one still listed
    for round_, keys in enumerate(([first_key], [second_key, first_key]), 1):
        settings = {"webhook_encryption_key": [SecretStr(k) for k in keys]}
        async with serving(db_url, **settings) as api:
            cid = f"enc-{round_}"
            token = (await api.start(cid))["token"]
            await api.as_candidate("POST", cid, "complete", token)
            await eventually(
                lambda expected=2 * round_: len(receiver.processed) == expected, what="both events"
            )
        now = dict(db.execute("SELECT url, secret_ciphertext FROM webhook_endpoint").fetchall())
        assert all(now[url] != stored[url] for url in stored)
        only_new = SecretBox([keys[0].encode()])
        assert {only_new.decrypt(c) for c in now.values()} == {created["secret"], legacy}
        stored = now
    for request in receiver.requests:
        secret = legacy if request.json["type"] == "session.completed" else created["secret"]
        assert verifies(secret, request.body, request.headers)

    # the key is gone: deliveries fail with a reason, nothing is sent unsigned
    receiver.requests.clear()
    settings = {"webhook_encryption_key": [SecretStr(Fernet.generate_key().decode())]}
    async with serving(db_url, **settings) as api:
        await api.start("enc-lost")
        row = await eventually(
            lambda: db.execute(
                "SELECT last_error FROM webhook_delivery WHERE candidate_id = 'enc-lost' "
                "AND last_error IS NOT NULL"
            ).fetchone(),
            what="a failed attempt",
        )
    assert "decrypts this endpoint's secret" in row[0]
    assert receiver.requests == []
