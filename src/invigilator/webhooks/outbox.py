"""The webhook outbox in PostgreSQL: one method per named query of sql/webhooks.sql.

Deliveries are enqueued by the trigger of migration 0002 in the transaction of the change
itself; this module only claims them, records attempts, produces session.silent and serves the
staff API. Every method is one short transaction: no connection is held during an HTTP call.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from invigilator import sql
from invigilator.db.connector import Row, transaction
from invigilator.domain import Policy
from invigilator.webhooks.vault import SecretBox, SecretUnreadable, new_secret

log = logging.getLogger(__name__)

Q = sql.webhook_queries()


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this worker for one attempt."""

    id: int
    event_id: str
    type: str
    candidate_id: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    endpoint_id: int
    url: str
    #: The endpoint's signing secrets, newest first (empty for the environment's endpoint,
    #: whose secrets only the worker's settings hold, and for one no key decrypts).
    secrets: tuple[str, ...]
    from_env: bool
    include_answers: bool


class WebhookStore:
    """`box` encrypts and decrypts endpoint secrets: needed by everything that touches one."""

    def __init__(self, pool: AsyncConnectionPool[Any], box: SecretBox | None = None) -> None:
        self.pool = pool
        self._box = box
        self._sharded: bool | None = None  # learnt once: is webhook_delivery distributed?

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            raise RuntimeError("this WebhookStore was made without a SecretBox")
        return self._box

    async def _is_sharded(self) -> bool:
        if self._sharded is None:
            rows = await self._all("citus_installed")
            self._sharded = bool(rows[0]["citus"]) and bool(
                (await self._all("delivery_sharded"))[0]["sharded"]
            )
        return self._sharded

    async def _all(self, name: str, **params: Any) -> list[Row]:
        async with transaction(self.pool) as cur:
            await cur.execute(Q[name], params)
            return await cur.fetchall() if cur.description else []

    # --- the worker -------------------------------------------------------------------------

    async def sync_env_endpoint(self, url: str | None, *, include_answers: bool) -> None:
        """Make the INVIGILATOR_WEBHOOK_URL endpoint match the environment (or deactivate it)."""
        if url:
            await self._all("sync_env_endpoint", url=url, include_answers=include_answers)
        else:
            await self._all("deactivate_env_endpoint")

    async def claim(self, limit: int, lease: timedelta, *, env_secret_known: bool) -> list[Claimed]:
        if await self._is_sharded():
            rows = await self._claim_in_two_steps(limit, lease, env_secret_known)
        else:
            rows = await self._all(
                "claim_due", limit=limit, lease=lease, env_secret_known=env_secret_known
            )
        return [self._claimed(r) for r in rows]

    def _claimed(self, r: Row) -> Claimed:
        found: list[str] = []
        if not r["from_env"]:
            try:
                if r["secret_ciphertext"] is not None:
                    found.append(self.box.decrypt(r["secret_ciphertext"]))
                elif r["secret"] is not None:  # 0002's, until the next start encrypts it
                    found.append(r["secret"])
            except SecretUnreadable:
                pass  # nothing to sign with: the worker records why, and sends nothing
            # The previous secret only adds a signature; without the current one, none.
            if found and r["previous_secret_ciphertext"] is not None:
                with contextlib.suppress(SecretUnreadable):
                    found.append(self.box.decrypt(r["previous_secret_ciphertext"]))
        return Claimed(
            id=r["id"],
            event_id=str(r["event_id"]),
            type=r["type"],
            candidate_id=str(r["candidate_id"]),
            payload=r["payload"],
            created_at=r["created_at"],
            attempts=r["attempts"],
            endpoint_id=r["endpoint_id"],
            url=r["url"],
            secrets=tuple(found),
            from_env=r["from_env"],
            include_answers=r["include_answers"],
        )

    async def _claim_in_two_steps(
        self, limit: int, lease: timedelta, env_secret_known: bool
    ) -> list[Row]:
        """claim_due on a distributed outbox (Citus): pick, then lease what is still due."""
        async with transaction(self.pool) as cur:
            await cur.execute(Q["pick_due"], {"limit": limit, "env_secret_known": env_secret_known})
            picked = await cur.fetchall()
            if not picked:
                return []
            await cur.execute(
                Q["claim_picked"],
                {
                    "lease": lease,
                    "candidate_ids": [r["candidate_id"] for r in picked],
                    "ids": [r["id"] for r in picked],
                },
            )
            rows = await cur.fetchall()
        order = {r["id"]: i for i, r in enumerate(picked)}  # claim_due's order: oldest due first
        return sorted(rows, key=lambda r: order[r["id"]])

    # The worker's records name the delivery by its key, (candidate_id, id): on Citus one shard.

    async def delivered(self, delivery: Claimed, http_status: int) -> None:
        await self._all(
            "record_delivered",
            candidate_id=delivery.candidate_id,
            id=delivery.id,
            http_status=http_status,
        )

    async def failed_attempt(
        self,
        delivery: Claimed,
        *,
        http_status: int | None,
        error: str,
        delay: timedelta,
        max_age: timedelta,
    ) -> bool:
        """Record a failed attempt; True when the delivery was given up (status failed)."""
        rows = await self._all(
            "record_failed_attempt",
            candidate_id=delivery.candidate_id,
            id=delivery.id,
            http_status=http_status,
            error=error[:500],
            delay=delay,
            max_age=max_age,
        )
        return bool(rows) and rows[0]["status"] == "failed"

    async def gone(self, delivery: Claimed, error: str) -> None:
        """The receiver answered 410 Gone: fail the delivery and turn its endpoint off."""
        async with transaction(self.pool) as cur:
            if await self._is_sharded():
                # The delivery (sharded), then its endpoint (a reference table, on every node),
                # in one statement: Citus takes that only one connection per node at a time.
                await cur.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
            await cur.execute(
                Q["gone"],
                {"candidate_id": delivery.candidate_id, "id": delivery.id, "error": error[:500]},
            )

    async def reseal(self) -> int:
        """Encrypt 0002's clear secrets and re-encrypt those under an older key; how many
        endpoints changed. Safe to run in every process at once."""
        box = self.box
        changed = 0
        for row in await self._all("stored_secrets"):
            try:
                current = row["secret_ciphertext"]
                if current is None and row["secret"] is not None:
                    current = box.encrypt(row["secret"])
                elif current is not None and not box.current(current):
                    current = box.reseal(current)
                previous = row["previous_secret_ciphertext"]
                if previous is not None and not box.current(previous):
                    previous = box.reseal(previous)
            except SecretUnreadable:
                log.error(
                    "webhook endpoint %d: no INVIGILATOR_WEBHOOK_ENCRYPTION_KEY decrypts its "
                    "secret; rotate it (POST /api/v1/webhooks/%d/rotate-secret)",
                    row["id"],
                    row["id"],
                )
                continue
            if (current, previous, None) == (
                row["secret_ciphertext"],
                row["previous_secret_ciphertext"],
                row["secret"],
            ):
                continue
            await self._all(
                "reseal_secrets",
                id=row["id"],
                secret_ciphertext=current,
                previous_secret_ciphertext=previous,
                was_secret=row["secret"],
                was_secret_ciphertext=row["secret_ciphertext"],
                was_previous_secret_ciphertext=row["previous_secret_ciphertext"],
            )
            changed += 1
        return changed

    async def enqueue_silent(self, policy: Policy) -> int:
        """session.silent for sessions silent for half the abandon threshold; how many new."""
        rows = await self._all(
            "enqueue_silent", **policy.sql_params(), silent_after=policy.abandon_after / 2
        )
        return len(rows)

    async def delete_old(self, keep: timedelta) -> None:
        await self._all("delete_old", keep=keep)
        await self._all("forget_expired_secrets")

    async def scrape_counts(self) -> tuple[int, int]:
        """(active sessions with time left, pending deliveries), for /metrics."""
        rows = await self._all("scrape_counts")
        return int(rows[0]["active"]), int(rows[0]["pending"])

    # --- the staff API ----------------------------------------------------------------------

    async def create_endpoint(
        self,
        url: str,
        *,
        event_types: list[str] | None,
        include_answers: bool,
        description: str | None,
        secret: str | None = None,
    ) -> Row:
        """The new endpoint, with its secret in clear under `secret` (for this answer only)."""
        secret = secret or new_secret()
        rows = await self._all(
            "create_endpoint",
            url=url,
            secret_ciphertext=self.box.encrypt(secret),
            event_types=event_types,
            include_answers=include_answers,
            description=description,
        )
        return {**rows[0], "secret": secret}

    async def rotate_secret(self, endpoint_id: int, *, keep: timedelta) -> Row | None:
        """A new secret (in clear under `secret`); the current one signs too for `keep`.
        None when there is no active staff-registered endpoint `endpoint_id`."""
        await self.reseal()  # a clear 0002 secret becomes the previous one, encrypted
        secret = new_secret()
        rows = await self._all(
            "rotate_secret", id=endpoint_id, keep=keep, secret_ciphertext=self.box.encrypt(secret)
        )
        return {**rows[0], "secret": secret} if rows else None

    async def list_endpoints(self) -> list[Row]:
        return await self._all("list_endpoints")

    async def get_endpoint(self, endpoint_id: int) -> Row | None:
        rows = await self._all("get_endpoint", id=endpoint_id)
        return rows[0] if rows else None

    async def remove_endpoint(self, endpoint_id: int) -> bool:
        """Deactivate a staff-registered endpoint and fail its pending deliveries."""
        async with transaction(self.pool) as cur:
            await cur.execute(Q["deactivate_endpoint"], {"id": endpoint_id})
            if await cur.fetchone() is None:
                return False
            await cur.execute(
                Q["fail_pending_for_endpoint"],
                {"endpoint_id": endpoint_id, "reason": "endpoint removed"},
            )
            return True

    async def deliveries(
        self,
        *,
        status: str | None = None,
        candidate_id: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
        delivery_id: int | None = None,
    ) -> list[Row]:
        return await self._all(
            "list_deliveries",
            status=status,
            candidate_id=candidate_id,
            before_id=before_id,
            limit=limit,
            id=delivery_id,
        )

    async def retry(self, delivery_id: int) -> bool:
        """Make a failed delivery due now; False when it is not failed or its endpoint is off."""
        return bool(await self._all("retry_delivery", id=delivery_id))
