"""The baselines bench.heartbeat measures Invigilator against, on the same stack (FastAPI under
uvicorn, same worker count):

- `/empty` (GET or POST): returns a small JSON object and touches nothing: the framework's
  ceiling.
- `POST /api/v1/sessions/{candidate_id}/heartbeat`: the straightforward implementation a team
  would write without Invigilator: verify the candidate token exactly as Invigilator does
  (`invigilator.api.tokens.verify`, then the same constant-time subject check), then run the setup
  guide's UPDATE, one per request, through a psycopg_pool (the same pool sizes as Invigilator's
  defaults), and answer 200 (404 when no row matched).

    DATABASE_URL=... INVIGILATOR_SECRET_KEY=... uvicorn bench.baseline_app:app --workers 2
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from psycopg_pool import AsyncConnectionPool

from invigilator.api import tokens

#: The setup guide's heartbeat statement, as written there.
SEED_HEARTBEAT_SQL = (
    "UPDATE test_session SET last_heartbeat = CURRENT_TIMESTAMP, "
    "last_activity = CURRENT_TIMESTAMP WHERE candidate_id = %s"
)

_pool: AsyncConnectionPool[Any] | None = None


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global _pool
    url = os.environ.get("DATABASE_URL")
    if url:
        _pool = AsyncConnectionPool(
            url,
            min_size=int(os.environ.get("INVIGILATOR_POOL_MIN_SIZE", "2")),
            max_size=int(os.environ.get("INVIGILATOR_POOL_MAX_SIZE", "10")),
            open=False,
        )
        await _pool.open(wait=True)
    try:
        yield
    finally:
        if _pool is not None:
            await _pool.close()


# FastAPI's native OpenTelemetry off, as Invigilator runs it (INVIGILATOR_OTEL=false): the
# baselines get the same, fastest, stack.
app = FastAPI(lifespan=lifespan, telemetry={"tracing": False, "metrics": False, "logs": False})
SECRET = os.environ.get("INVIGILATOR_SECRET_KEY", "")


@app.get("/empty")
@app.post("/empty")
async def empty() -> dict[str, bool]:
    return {"ok": True}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/api/v1/sessions/{candidate_id}/heartbeat")
async def heartbeat(candidate_id: str, authorization: str = Header("")) -> dict[str, bool]:
    if not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "a candidate token is required")
    try:
        claims = tokens.verify(authorization[7:].strip(), SECRET)
    except (tokens.TokenInvalid, tokens.TokenExpired) as exc:
        raise HTTPException(401, "the candidate token is not valid") from exc
    if not hmac.compare_digest(claims.candidate_id.encode(), candidate_id.encode()):
        raise HTTPException(403, "this token opens another candidate's session")
    assert _pool is not None
    async with _pool.connection() as conn:
        cur = await conn.execute(SEED_HEARTBEAT_SQL, (candidate_id,))
        if cur.rowcount == 0:
            raise HTTPException(404, "no test session")
    return {"ok": True}
