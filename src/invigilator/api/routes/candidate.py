"""Candidate API: what the browser client calls with its token (one session only)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response

from invigilator.api import schemas
from invigilator.api.deps import (
    CandidateDep,
    CandidateIdPath,
    CandidateOrStaffDep,
    RuntimeDep,
    StoreDep,
    candidate_from_token,
)
from invigilator.api.problems import ApiError
from invigilator.validation import check_answers, check_name

router = APIRouter(prefix="/api/v1/sessions/{candidate_id}", tags=["candidate"])


@router.get("/state", response_model=schemas.SessionWithAnswers)
async def state(candidate_id: CandidateOrStaffDep, store: StoreDep) -> schemas.SessionWithAnswers:
    """Everything a page needs to resume: status, clock, sections and saved answers."""
    session = await store.get(candidate_id)
    return schemas.SessionWithAnswers(**schemas.session_fields(session, answers=True))


@router.post("/heartbeat", response_model=schemas.HeartbeatResponse)
async def heartbeat(
    candidate_id: CandidateDep,
    runtime: RuntimeDep,
    body: schemas.HeartbeatRequest | None = None,
) -> schemas.HeartbeatResponse:
    """The page is alive. Returns the clock and when to beat next."""
    clock = await runtime.heartbeats.beat(candidate_id, active=body.active if body else False)
    return schemas.HeartbeatResponse(
        **schemas.clock(clock),
        next_heartbeat_seconds=runtime.policy.heartbeat_interval.total_seconds(),
    )


@router.post("/activity", response_model=schemas.Clock)
async def activity(candidate_id: CandidateDep, store: StoreDep) -> schemas.Clock:
    """The candidate typed, clicked or scrolled."""
    return schemas.Clock(**schemas.clock(await store.record_activity(candidate_id)))


@router.post("/events", status_code=204)
async def client_event(
    candidate_id: CandidateDep, body: schemas.ClientEventRequest, store: StoreDep
) -> Response:
    """Focus lost/regained, tab hidden/visible: recorded in the session's timeline."""
    await store.record_client_event(candidate_id, body.type)
    return Response(status_code=204)


@router.post("/sections", response_model=schemas.SessionOut)
async def complete_section(
    candidate_id: CandidateDep, body: schemas.SectionRequest, store: StoreDep
) -> schemas.SessionOut:
    """Mark a section completed (repeating it is harmless)."""
    check_name(body.section, "section")
    session = await store.complete_section(candidate_id, body.section)
    return schemas.SessionOut(**schemas.session_fields(session, answers=False))


@router.patch("/answers", response_model=schemas.SaveResponse)
async def save_answers(
    candidate_id: CandidateDep, body: schemas.AnswersRequest, store: StoreDep, runtime: RuntimeDep
) -> schemas.SaveResponse:
    """Merge answers. A 200 means committed. Per question the highest `seq` wins."""
    limits = runtime.limits
    check_answers(body.answers, limits)
    result = await store.save_answers(
        candidate_id, body.answers, body.seq, max_total_bytes=limits.max_answers_bytes
    )
    return schemas.SaveResponse(
        **schemas.clock(result.session),
        seq=result.seq,
        applied=result.applied,
        superseded=result.superseded,
    )


@router.post("/complete", response_model=schemas.CompleteResponse)
async def complete(candidate_id: CandidateDep, store: StoreDep) -> schemas.CompleteResponse:
    """Submit the test. Idempotent: a repeat returns the stored outcome."""
    session, ended_now = await store.complete(candidate_id)
    return schemas.CompleteResponse(
        **schemas.session_fields(session, answers=True), already_ended=not ended_now
    )


@router.post(
    "/tab-close",
    status_code=204,
    openapi_extra={
        "requestBody": {
            "description": 'What navigator.sendBeacon sends: {"token": "…"} as text/plain '
            "(beacons carry no headers), or the bare token.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def tab_close(
    candidate_id: CandidateIdPath, request: Request, store: StoreDep, runtime: RuntimeDep
) -> Response:
    """The tab is closing. If no heartbeat follows within the tab-close grace, the session ends
    per the tab-close policy; a reload's heartbeat keeps it."""
    token = _beacon_token(request, await request.body())
    candidate_from_token(token, candidate_id, runtime)
    await store.tab_close(candidate_id)
    return Response(status_code=204)


def _beacon_token(request: Request, body: bytes) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
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
