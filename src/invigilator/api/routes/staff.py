"""Staff API: start sessions, list and read them, extend time, end them. Bearer staff key."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from invigilator.api import schemas, tokens
from invigilator.api.deps import CandidateIdPath, RuntimeDep, StaffDep, StoreDep
from invigilator.domain import InvalidInput, Method, Status
from invigilator.validation import check_name

router = APIRouter(prefix="/api/v1/sessions", tags=["staff"])


def _encode_cursor(start: datetime, candidate_id: str) -> str:
    raw = json.dumps([start.isoformat(), candidate_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        start, candidate_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(start), str(candidate_id)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this API returned", field="cursor") from None


@router.post(
    "",
    response_model=schemas.StartResponse,
    status_code=201,
    responses={200: {"description": "The candidate's active session, with a fresh token"}},
)
async def start_session(
    body: schemas.StartRequest,
    staff: StaffDep,
    store: StoreDep,
    runtime: RuntimeDep,
    response: Response,
) -> schemas.StartResponse:
    """Start a candidate's test session and get the candidate's token. Repeating it for an
    active session returns that session (200) with a fresh token."""
    if body.sections is not None:
        if len(body.sections) > runtime.limits.max_sections:
            raise InvalidInput(f"at most {runtime.limits.max_sections} sections", field="sections")
        for section in body.sections:
            check_name(section, "section")
    session, created = await store.start(
        body.candidate_id,
        duration_minutes=body.duration_minutes,
        planned_sections=list(dict.fromkeys(body.sections)) if body.sections else None,
        create_candidate=body.create_candidate,
        actor=staff.actor,
    )
    if not created:
        response.status_code = 200
    expires = tokens.token_expiry(
        session.test_start_time, session.test_duration_minutes, runtime.policy
    )
    token = tokens.issue(session.candidate_id, expires, runtime.secret_key, session.server_now)
    return schemas.StartResponse(
        **schemas.session_fields(session, answers=True), token=token, token_expires_at=expires
    )


@router.get("", response_model=schemas.SessionPage)
async def list_sessions(
    staff: StaffDep,
    store: StoreDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> schemas.SessionPage:
    """Sessions, newest start first; follow `next_cursor` for the next page."""
    after = _decode_cursor(cursor) if cursor else None
    page = await store.list_sessions(status=status, limit=limit, after=after)
    next_cursor = (
        _encode_cursor(page[-1].test_start_time, page[-1].candidate_id)
        if len(page) == limit
        else None
    )
    return schemas.SessionPage(
        items=[schemas.SessionOut(**schemas.session_fields(s, answers=False)) for s in page],
        next_cursor=next_cursor,
    )


@router.get("/{candidate_id}", response_model=schemas.SessionWithAnswers)
async def get_session(
    candidate_id: CandidateIdPath, staff: StaffDep, store: StoreDep
) -> schemas.SessionWithAnswers:
    session = await store.get(candidate_id)
    return schemas.SessionWithAnswers(**schemas.session_fields(session, answers=True))


@router.get("/{candidate_id}/events", response_model=schemas.Timeline)
async def session_events(
    candidate_id: CandidateIdPath, staff: StaffDep, store: StoreDep
) -> schemas.Timeline:
    """The session's timeline, oldest first (for disputes: what happened, and when)."""
    events = await store.events(candidate_id)
    return schemas.Timeline(
        candidate_id=candidate_id,
        events=[
            schemas.EventOut(id=e.id, type=e.type, at=e.at, actor=e.actor, detail=e.detail)
            for e in events
        ],
    )


@router.post("/{candidate_id}/extend", response_model=schemas.SessionWithAnswers)
async def extend_session(
    candidate_id: CandidateIdPath, body: schemas.ExtendRequest, staff: StaffDep, store: StoreDep
) -> schemas.SessionWithAnswers:
    """Give a running session extra minutes; the deadline moves at once for everybody."""
    session = await store.extend(
        candidate_id, body.minutes, actor=staff.actor, reason=body.reason or None
    )
    return schemas.SessionWithAnswers(**schemas.session_fields(session, answers=True))


@router.post("/{candidate_id}/end", response_model=schemas.CompleteResponse)
async def end_session(
    candidate_id: CandidateIdPath, body: schemas.EndRequest, staff: StaffDep, store: StoreDep
) -> schemas.CompleteResponse:
    """Staff end a session: `submit` (completed / admin) or `terminate` (abandoned /
    admin_terminated). On an ended session it returns the stored outcome."""
    method = Method.ADMIN if body.outcome == "submit" else Method.ADMIN_TERMINATED
    session, ended_now = await store.complete(
        candidate_id, method, actor=staff.actor, reason=body.reason or None
    )
    return schemas.CompleteResponse(
        **schemas.session_fields(session, answers=True), already_ended=not ended_now
    )
