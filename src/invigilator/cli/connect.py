"""How a command that reads or writes sessions gets its connections."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from invigilator.config import Settings
from invigilator.db import connector, migrate
from invigilator.db.selection import Database
from invigilator.service import Sessions
from invigilator.store import SessionStore


def migrate_embedded(db: Database) -> None:
    """The embedded database gets its schema on first use (as `db upgrade` would give it);
    any other database is left as it is: a missing schema is reported, not created."""
    if db.embedded:
        migrate.upgrade(db.url, create_candidate_table=True)


@contextlib.asynccontextmanager
async def open_pool(
    db: Database, settings: Settings, size: int = 1
) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool of `size` connections, open. A database that does not answer raises the plain
    connection's error: it says why (refused, no such host, bad password), where the pool
    would log a warning for every retry and then say only that it timed out."""
    probe = await psycopg.AsyncConnection.connect(
        db.url, connect_timeout=max(1, round(settings.db_connect_timeout_seconds))
    )
    await probe.close()
    pool = connector.pool_for(db.url, settings, min_size=size, max_size=size)
    try:
        await pool.open(wait=True, timeout=settings.db_connect_timeout_seconds)
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def open_sessions(db: Database, settings: Settings) -> AsyncIterator[Sessions]:
    # One connection is all a sweeper or a lookup uses at a time.
    async with open_pool(db, settings) as pool:
        yield Sessions(SessionStore(pool, settings.policy()), settings.limits())
