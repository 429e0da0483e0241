"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from invigilator.api.deps import StoreDep
from invigilator.domain import DatabaseUnavailable
from invigilator.store import translate_errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (it does not touch the database)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(store: StoreDep) -> dict[str, str]:
    """The database answers."""
    try:
        with translate_errors():
            async with store.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
    except TimeoutError as exc:
        raise DatabaseUnavailable("the database is not reachable") from exc
    return {"status": "ready"}
