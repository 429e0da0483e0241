"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from invigilator.api.deps import RuntimeDep
from invigilator.db.connector import translate_errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (it does not touch the database)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    """The database answers."""
    with translate_errors():
        async with runtime.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    return {"status": "ready"}
