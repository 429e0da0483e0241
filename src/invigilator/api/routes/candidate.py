"""Candidate API: what the browser client calls with its token (one session only). Each route
turns HTTP into one call of the service (invigilator.service) and its result into HTTP."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

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
from invigilator.api.routes import operation_id
from invigilator.domain import PageSuperseded
from invigilator.validation import MAX_PAGE_ID_LENGTH, is_name

router = APIRouter(
    generate_unique_id_function=operation_id,
    prefix="/api/v1/sessions/{candidate_id}",
    tags=["candidate"],
    responses=responses(
        401, 403, 404, 422, 429, 503, s403="`forbidden`: the token opens another session."
    ),
)
ENDED = "`session_ended`: the session is over; the body says how it ended."
ENDED_OR_SUPERSEDED = (
    ENDED + " `page_superseded`: a newer page of this session took over (page policy "
    "`single`); claim it again (POST …/pages) to go on from this page."
)
TIME_UP = (
    ENDED_OR_SUPERSEDED + " `time_up`: past the deadline only a submit is taken "
    "(`at_deadline: grace`)."
)


@router.get("/state", response_model=schemas.SessionWithAnswers)
async def state(
    candidate_id: CandidateOrStaffDep, sessions: SessionsDep
) -> schemas.SessionWithAnswers:
    """Everything a page needs to resume: status, clock, sections and saved answers."""
    return schemas.SessionWithAnswers(**schemas.session_fields(await sessions.read(candidate_id)))


@router.post(
    "/pages",
    response_model=schemas.PageClaimResponse,
    responses=responses(409, 413, s409=ENDED),
)
async def claim_page(
    candidate_id: CandidateDep,
    body: schemas.PageClaimRequest,
    request: Request,
    sessions: SessionsDep,
) -> schemas.PageClaimResponse:
    """A page opens the session: its claim (device, address, first and last seen) becomes the
    newest. With the page policy `single` every other page of the session is superseded: its
    writes are refused with `page_superseded` until it claims again. Returns what the page
    needs to resume, as `/state` does."""
    claim = await sessions.claim_page(
        candidate_id,
        body.page_id,
        user_agent=request.headers.get("user-agent"),
        client_address=request.client.host if request.client else None,
    )
    return schemas.PageClaimResponse(
        **schemas.session_fields(claim.session), superseded_pages=claim.superseded
    )


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


@router.post(
    "/activity",
    response_model=schemas.Clock,
    responses=responses(409, 413, s409=ENDED_OR_SUPERSEDED),
)
async def activity(candidate_id: CandidateDep, sessions: SessionsDep) -> schemas.Clock:
    """The candidate typed, clicked or scrolled."""
    return schemas.Clock(**schemas.clock(await sessions.record_activity(candidate_id)))


@router.post("/events", status_code=204, responses=responses(409, 413, s409=ENDED_OR_SUPERSEDED))
async def client_event(
    candidate_id: CandidateDep, body: schemas.ClientEventRequest, sessions: SessionsDep
) -> Response:
    """Focus lost/regained, tab hidden/visible: recorded in the session's timeline."""
    await sessions.record_event(candidate_id, body.type, page_id=body.page_id)
    return Response(status_code=204)


@router.post(
    "/sections",
    response_model=schemas.SessionOut,
    responses=responses(409, 413, s409=TIME_UP),
)
async def complete_section(
    candidate_id: CandidateDep, body: schemas.SectionRequest, sessions: SessionsDep
) -> schemas.SessionOut:
    """Mark a section completed (repeating it is harmless)."""
    session = await sessions.complete_section(candidate_id, body.section, page_id=body.page_id)
    return schemas.SessionOut(**schemas.session_fields(session, answers=False))


@router.patch(
    "/answers",
    response_model=schemas.SaveResponse,
    responses=responses(409, 413, s409=TIME_UP),
)
async def save_answers(
    candidate_id: CandidateDep, body: schemas.AnswersRequest, sessions: SessionsDep
) -> schemas.SaveResponse:
    """Merge answers. A 200 means committed. Per question the highest `seq` (the edit's
    time) wins; a superseded question comes back with the newer answer the server holds."""
    result = await sessions.save_answers(candidate_id, body.answers, body.seq, page_id=body.page_id)
    return schemas.SaveResponse(
        **schemas.clock(result.clock),
        seq=result.seq,
        applied=result.applied,
        superseded=result.superseded,
        current={q: value for q, (value, _) in result.current.items()},
        current_seq={q: seq for q, (_, seq) in result.current.items()},
    )


@router.post(
    "/complete",
    response_model=schemas.CompleteResponse,
    responses=responses(
        409,
        413,
        s409="`page_superseded`: a newer page of this session took over (page policy "
        "`single`); nothing was submitted.",
    ),
)
async def complete(
    candidate_id: CandidateDep,
    sessions: SessionsDep,
    page_id: Annotated[
        schemas.PageId | None, Query(description=schemas.PAGE_ID_DESCRIPTION)
    ] = None,
) -> schemas.CompleteResponse:
    """Submit the test. Idempotent: a repeat returns the stored outcome (`page_id` then names
    the page that submitted). The page is a query parameter: the request has no body."""
    return schemas.complete_response(*await sessions.complete(candidate_id, page_id=page_id))


@router.post(
    "/tab-close",
    status_code=204,
    responses=responses(413),
    openapi_extra={
        "requestBody": {
            "description": 'What navigator.sendBeacon sends: {"token": "…", "page_id": "…"} '
            "as text/plain (beacons carry no headers), or the bare token; the same JSON as "
            "application/json from anything else. A page a newer one took over from is "
            "ignored (204, nothing recorded).",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "token": {"type": "string"},
                            "page_id": {"type": "string"},
                        },
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
    body = await request.body()
    token = tokens.bearer(request.scope["headers"]) or _beacon_token(body)
    candidate_from_token(token, candidate_id, runtime)
    # An older page closing says nothing about the page the candidate is on.
    with contextlib.suppress(PageSuperseded):
        await sessions.tab_close(candidate_id, page_id=_beacon_page(body))
    return Response(status_code=204)


def _beacon_json(body: bytes) -> dict[str, Any] | None:
    text = body.decode("utf-8", errors="replace").strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _beacon_token(body: bytes) -> str:
    """A beacon carries no headers: its token is in the body, as JSON or bare."""
    data = _beacon_json(body)
    if data is not None:
        if isinstance(data.get("token"), str):
            return str(data["token"])
    else:
        text = body.decode("utf-8", errors="replace").strip()
        if text and not text.startswith("{") and len(text) < 4096 and " " not in text:
            return text
    raise ApiError("unauthorized", "a candidate token is required (in the body for beacons)")


def _beacon_page(body: bytes) -> str | None:
    """The closing page's id, when the beacon names one (a valid one; else no page)."""
    data = _beacon_json(body)
    page = data.get("page_id") if data else None
    return page if isinstance(page, str) and is_name(page, MAX_PAGE_ID_LENGTH) else None
