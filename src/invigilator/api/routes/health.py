"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from invigilator.api.deps import RuntimeDep
from invigilator.api.problems import responses
from invigilator.api.routes import operation_id
from invigilator.db.connector import translate_errors

router = APIRouter(generate_unique_id_function=operation_id, tags=["health"])


class Healthy(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


@router.get("/healthz", response_model=Healthy)
async def healthz() -> dict[str, str]:
    """The process is up (it does not touch the database)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=responses(503))
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    """The database answers."""
    with translate_errors():
        async with runtime.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    return {"status": "ready"}
