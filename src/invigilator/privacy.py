"""Personal data and staff sign-ins: erasing one candidate's session, the retention sweep,
and dashboard sign-outs that hold in every worker process (they are kept in PostgreSQL).

SQL in sql/privacy.sql; the tables come from migration 0005.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from invigilator import sql
from invigilator.db.connector import Cursor, citus_distributed, retried_on_deadlock, transaction
from invigilator.domain import SessionNotFound

Q = sql.privacy_queries()


@dataclass(frozen=True)
class Erasure:
    """What an erasure removed. Names no candidate: this is also what the audit row keeps."""

    erasure_id: str
    erased_at: datetime
    actor: str
    session_status: str
    answers_removed: int
    events_removed: int
    deliveries_removed: int
    webhooks_queued: int


@dataclass(frozen=True)
class Purged:
    sessions: int
    events: int
    deliveries: int


class PrivacyStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._distributed: bool | None = None  # learnt once: is test_session sharded?

    def _cursor(self) -> contextlib.AbstractAsyncContextManager[Cursor]:
        return transaction(self.pool)

    # --- staff sign-ins -------------------------------------------------------------------

    async def sign_out(self, sign_in_id: str, expires_at: datetime) -> None:
        async with self._cursor() as cur:
            await cur.execute(Q["forget_old_sign_outs"])
            await cur.execute(
                Q["record_sign_out"],
                {"sign_in_id": uuid.UUID(sign_in_id), "expires_at": expires_at},
            )

    async def is_signed_out(self, sign_in_id: str) -> bool:
        try:
            key = uuid.UUID(sign_in_id)
        except ValueError:
            return True  # no sign-in this service issued
        async with self._cursor() as cur:
            await cur.execute(Q["is_signed_out"], {"sign_in_id": key})
            row = await cur.fetchone()
        return bool(row and row["signed_out"])

    # --- erasure and retention ------------------------------------------------------------

    @retried_on_deadlock
    async def erase(self, candidate_id: str, *, actor: str) -> Erasure:
        """Erase a candidate's session, answers, timeline and webhook deliveries (SessionNotFound
        when there is none). The candidate row belongs to the host application and stays."""
        async with self._cursor() as cur:
            await cur.execute(Q["lock_for_erasure"], {"candidate_id": candidate_id})
            await cur.execute(Q["erase_session"], {"candidate_id": candidate_id, "actor": actor})
            row = await cur.fetchone()
        if row is None:
            raise SessionNotFound(f"no test session for candidate {candidate_id!r}")
        return Erasure(**{**row, "erasure_id": str(row["erasure_id"])})

    @retried_on_deadlock
    async def purge_ended(self, keep: timedelta, limit: int = 500) -> Purged:
        """One bounded batch of the retention rule (a transaction of its own)."""
        async with self._cursor() as cur:
            if self._distributed is None:
                self._distributed = await citus_distributed(cur)
            name = "purge_ended_unlocked" if self._distributed else "purge_ended"
            await cur.execute(Q[name], {"keep": keep, "limit": limit})
            row = await cur.fetchone()
        assert row is not None
        return Purged(**row)
