"""Candidate API: what the browser client calls with its token (one session only). Each route
turns HTTP into one call of the service (invigilator.service) and its result into HTTP."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response

from invigilator.api import schemas, tokens
from invigilator.api.deps import (
    CandidateDep,
    CandidateIdPath,
    CandidateOrStaffDep,
    RuntimeDep,
    SessionsDep,
    candidate_from_token,
)
from invigilator.api.paths import HEARTBEAT_PATH
from invigilator.api.problems import ApiError, responses

router = APIRouter(
    prefix="/api/v1/sessions/{candidate_id}",
    tags=["candidate"],
    responses=responses(
        401, 403, 404, 422, 429, 503, s403="`forbidden`: the token opens another session."
    ),
)
ENDED = "`session_ended`: the session is over; the body says how it ended."


@router.get("/state", response_model=schemas.SessionWithAnswers)
async def state(
    candidate_id: CandidateOrStaffDep, sessions: SessionsDep
) -> schemas.SessionWithAnswers:
    """Everything a page needs to resume: status, clock, sections and saved answers."""
    return schemas.SessionWithAnswers(**schemas.session_fields(await sessions.read(candidate_id)))


@router.post(
    HEARTBEAT_PATH.removeprefix(router.prefix),
    response_model=schemas.HeartbeatResponse,
    responses=responses(409, 413, s409=ENDED),
)
async def heartbeat(
    candidate_id: CandidateDep,
    sessions: SessionsDep,
    body: schemas.HeartbeatRequest | None = None,
) -> schemas.HeartbeatResponse:
    """The page is alive. Returns the clock and when to beat next."""
    clock = await sessions.heartbeat(candidate_id, active=body.active if body else False)
    return schemas.heartbeat_response(clock, sessions.policy)


@router.post("/activity", response_model=schemas.Clock, responses=responses(409, 413, s409=ENDED))
async def activity(candidate_id: CandidateDep, sessions: SessionsDep) -> schemas.Clock:
    """The candidate typed, clicked or scrolled."""
    return schemas.Clock(**schemas.clock(await sessions.record_activity(candidate_id)))


@router.post("/events", status_code=204, responses=responses(409, 413, s409=ENDED))
async def client_event(
    candidate_id: CandidateDep, body: schemas.ClientEventRequest, sessions: SessionsDep
) -> Response:
    """Focus lost/regained, tab hidden/visible: recorded in the session's timeline."""
    await sessions.record_event(candidate_id, body.type)
    return Response(status_code=204)


@router.post(
    "/sections", response_model=schemas.SessionOut, responses=responses(409, 413, s409=ENDED)
)
async def complete_section(
    candidate_id: CandidateDep, body: schemas.SectionRequest, sessions: SessionsDep
) -> schemas.SessionOut:
    """Mark a section completed (repeating it is harmless)."""
    session = await sessions.complete_section(candidate_id, body.section)
    return schemas.SessionOut(**schemas.session_fields(session, answers=False))


@router.patch(
    "/answers", response_model=schemas.SaveResponse, responses=responses(409, 413, s409=ENDED)
)
async def save_answers(
    candidate_id: CandidateDep, body: schemas.AnswersRequest, sessions: SessionsDep
) -> schemas.SaveResponse:
    """Merge answers. A 200 means committed. Per question the highest `seq` wins."""
    result = await sessions.save_answers(candidate_id, body.answers, body.seq)
    return schemas.SaveResponse(
        **schemas.clock(result.clock),
        seq=result.seq,
        applied=result.applied,
        superseded=result.superseded,
    )


@router.post("/complete", response_model=schemas.CompleteResponse, responses=responses(413))
async def complete(candidate_id: CandidateDep, sessions: SessionsDep) -> schemas.CompleteResponse:
    """Submit the test. Idempotent: a repeat returns the stored outcome."""
    return schemas.complete_response(*await sessions.complete(candidate_id))


@router.post(
    "/tab-close",
    status_code=204,
    responses=responses(413),
    openapi_extra={
        "requestBody": {
            "description": 'What navigator.sendBeacon sends: {"token": "…"} as text/plain '
            "(beacons carry no headers), or the bare token; the same JSON as "
            "application/json from anything else.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"token": {"type": "string"}},
                        "required": ["token"],
                    }
                },
                "text/plain": {"schema": {"type": "string"}},
            },
        }
    },
)
async def tab_close(
    candidate_id: CandidateIdPath, request: Request, sessions: SessionsDep, runtime: RuntimeDep
) -> Response:
    """The tab is closing. If no heartbeat follows within the tab-close grace, the session ends
    per the tab-close policy; a reload's heartbeat keeps it."""
    token = tokens.bearer(request.scope["headers"]) or _beacon_token(await request.body())
    candidate_from_token(token, candidate_id, runtime)
    await sessions.tab_close(candidate_id)
    return Response(status_code=204)


def _beacon_token(body: bytes) -> str:
    """A beacon carries no headers: its token is in the body, as JSON or bare."""
    text = body.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("token"), str):
            return str(data["token"])
    elif text and len(text) < 4096 and " " not in text:
        return text
    raise ApiError("unauthorized", "a candidate token is required (in the body for beacons)")
