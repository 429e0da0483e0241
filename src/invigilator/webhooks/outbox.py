"""The webhook outbox in PostgreSQL: one method per named query of sql/webhooks.sql.

Deliveries are enqueued by the trigger of migration 0002 in the transaction of the change
itself; this module only claims them, records attempts, produces session.silent and serves the
staff API. Every method is one short transaction: no connection is held during an HTTP call.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from invigilator import sql
from invigilator.db.connector import Row, transaction
from invigilator.domain import Policy

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
    secret: str | None
    from_env: bool
    include_answers: bool


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

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
        rows = await self._all(
            "claim_due", limit=limit, lease=lease, env_secret_known=env_secret_known
        )
        return [
            Claimed(
                id=r["id"],
                event_id=str(r["event_id"]),
                type=r["type"],
                candidate_id=str(r["candidate_id"]),
                payload=r["payload"],
                created_at=r["created_at"],
                attempts=r["attempts"],
                endpoint_id=r["endpoint_id"],
                url=r["url"],
                secret=r["secret"],
                from_env=r["from_env"],
                include_answers=r["include_answers"],
            )
            for r in rows
        ]

    async def delivered(self, delivery_id: int, http_status: int) -> None:
        await self._all("record_delivered", id=delivery_id, http_status=http_status)

    async def failed_attempt(
        self,
        delivery_id: int,
        *,
        http_status: int | None,
        error: str,
        delay: timedelta,
        max_age: timedelta,
    ) -> bool:
        """Record a failed attempt; True when the delivery was given up (status failed)."""
        rows = await self._all(
            "record_failed_attempt",
            id=delivery_id,
            http_status=http_status,
            error=error[:500],
            delay=delay,
            max_age=max_age,
        )
        return bool(rows) and rows[0]["status"] == "failed"

    async def enqueue_silent(self, policy: Policy) -> int:
        """session.silent for sessions silent for half the abandon threshold; how many new."""
        rows = await self._all(
            "enqueue_silent", **policy.sql_params(), silent_after=policy.abandon_after / 2
        )
        return len(rows)

    async def delete_old(self, keep: timedelta) -> None:
        await self._all("delete_old", keep=keep)

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
        rows = await self._all(
            "create_endpoint",
            url=url,
            secret=secret or new_secret(),
            event_types=event_types,
            include_answers=include_answers,
            description=description,
        )
        return rows[0]

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
    ) -> list[Row]:
        return await self._all(
            "list_deliveries",
            status=status,
            candidate_id=candidate_id,
            before_id=before_id,
            limit=limit,
        )
