"""Staff API: start sessions, list and read them, extend time, pause, resume, reopen, change
accommodations, end them, record incidents, and act on many at once. Bearer staff key.
Each route turns HTTP into one call of the service (invigilator.service) and back."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from invigilator.api import schemas, tokens
from invigilator.api.deps import CandidateIdPath, RuntimeDep, SessionsDep, StaffDep
from invigilator.api.problems import responses
from invigilator.api.routes import operation_id
from invigilator.bulk import Filter, Report
from invigilator.domain import InvalidInput, Status

router = APIRouter(
    generate_unique_id_function=operation_id,
    prefix="/api/v1/sessions",
    tags=["staff"],
    responses=responses(401, 422, 503),
)


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
    responses={
        200: {
            "model": schemas.StartResponse,
            "description": "The candidate's session was already active: it, with a fresh token",
        },
        201: {"description": "A new session, with the candidate's token"},
        **responses(
            403,
            404,
            409,
            413,
            s404="`candidate_not_found` (without `create_candidate`).",
            s409="`session_already_ended`: this candidate's session is over.",
        ),
    },
)
async def start_session(
    body: schemas.StartRequest,
    staff: StaffDep,
    sessions: SessionsDep,
    runtime: RuntimeDep,
    response: Response,
) -> schemas.StartResponse:
    """Start a candidate's test session and get the candidate's token. Repeating it for an
    active session returns that session (200) with a fresh token."""
    policy = body.policy or schemas.PolicyRequest()
    accommodations = body.accommodations or schemas.AccommodationsRequest()
    started = await sessions.start(
        body.candidate_id,
        duration_minutes=body.duration_minutes,
        sections=body.sections,
        create_candidate=body.create_candidate,
        actor=staff.actor,
        pages=body.page_policy,
        abandon_after_seconds=policy.abandon_after_seconds,
        tab_close=policy.tab_close,
        at_deadline=policy.at_deadline,
        grace_seconds=policy.grace_seconds,
        time_multiplier=accommodations.time_multiplier,
        extra_minutes=accommodations.extra_minutes,
    )
    if not started.created:
        response.status_code = 200
    token, expires = tokens.for_session(started.session, runtime.policy, runtime.secret_key)
    return schemas.StartResponse(
        **schemas.session_fields(started.session), token=token, token_expires_at=expires
    )


@router.post("/bulk", response_model=schemas.BulkOut, responses=responses(403, 413))
async def bulk_action(
    body: schemas.BulkRequest, staff: StaffDep, sessions: SessionsDep
) -> schemas.BulkOut:
    """Apply one action (`pause`, `resume`, `extend`, `end`, `incident`) to many sessions:
    those named by `candidate_ids`, or those matching `filter`. Each session is changed on its
    own, exactly once, as its single-session route would change it; a refusal for one (ended,
    unknown) is its item's result and changes nothing for the others. The reply has one item
    per session, in order. More sessions than `INVIGILATOR_BULK_MAX_SESSIONS` (1000) is a
    422."""
    where = None
    if body.filter is not None:
        f = body.filter
        where = Filter(f.status, f.started_since, f.started_until)
    fields = body.model_dump(exclude={"action", "candidate_ids", "filter"})
    report = await sessions.bulk(
        body.action, fields, actor=staff.actor, candidate_ids=body.candidate_ids, where=where
    )
    return _bulk_out(report)


def _bulk_out(report: Report) -> schemas.BulkOut:
    return schemas.BulkOut(
        action=report.action,
        requested=len(report.items),
        changed=report.count("changed"),
        unchanged=report.count("unchanged"),
        refused=report.count("refused"),
        items=[
            schemas.BulkItemOut(
                candidate_id=i.candidate_id,
                result=i.result,
                status=i.status,
                code=i.code,
                message=i.message,
            )
            for i in report.items
        ],
    )


@router.get("", response_model=schemas.SessionPage)
async def list_sessions(
    staff: StaffDep,
    sessions: SessionsDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> schemas.SessionPage:
    """Sessions, newest start first; follow `next_cursor` for the next page."""
    after = _decode_cursor(cursor) if cursor else None
    page = await sessions.list_sessions(status=status, limit=limit, after=after)
    next_cursor = (
        _encode_cursor(page[-1].test_start_time, page[-1].candidate_id)
        if len(page) == limit
        else None
    )
    return schemas.SessionPage(
        items=[schemas.SessionOut(**schemas.session_fields(s, answers=False)) for s in page],
        next_cursor=next_cursor,
    )


@router.get("/{candidate_id}", response_model=schemas.SessionWithAnswers, responses=responses(404))
async def get_session(
    candidate_id: CandidateIdPath, staff: StaffDep, sessions: SessionsDep
) -> schemas.SessionWithAnswers:
    return schemas.SessionWithAnswers(**schemas.session_fields(await sessions.read(candidate_id)))


@router.get("/{candidate_id}/events", response_model=schemas.Timeline, responses=responses(404))
async def session_events(
    candidate_id: CandidateIdPath, staff: StaffDep, sessions: SessionsDep
) -> schemas.Timeline:
    """The session's timeline, oldest first (for disputes: what happened, and when)."""
    events = await sessions.timeline(candidate_id)
    return schemas.Timeline(
        candidate_id=candidate_id,
        events=[
            schemas.EventOut(id=e.id, type=e.type, at=e.at, actor=e.actor, detail=e.detail)
            for e in events
        ],
    )


@router.post(
    "/{candidate_id}/extend",
    response_model=schemas.SessionWithAnswers,
    responses=responses(403, 404, 409, 413, s409="`session_ended`: too late to extend."),
)
async def extend_session(
    candidate_id: CandidateIdPath,
    body: schemas.ExtendRequest,
    staff: StaffDep,
    sessions: SessionsDep,
) -> schemas.SessionWithAnswers:
    """Give a running session extra minutes; the deadline moves at once for everybody."""
    session = await sessions.extend(
        candidate_id, body.minutes, actor=staff.actor, reason=body.reason
    )
    return schemas.SessionWithAnswers(**schemas.session_fields(session))


@router.post(
    "/{candidate_id}/pause",
    response_model=schemas.SessionWithAnswers,
    responses=responses(
        403, 404, 409, 413, s409="`already_paused`, or `session_ended`: too late to pause."
    ),
)
async def pause_session(
    candidate_id: CandidateIdPath,
    body: schemas.ReasonRequest,
    staff: StaffDep,
    sessions: SessionsDep,
) -> schemas.SessionWithAnswers:
    """Stop a running session's clock: its deadline moves by the paused time and no ending rule
    fires (deadline, silence, tab close) until it is resumed. The candidate's page locks at its
    next heartbeat; answers already typed are still saved."""
    session = await sessions.pause(candidate_id, actor=staff.actor, reason=body.reason)
    return schemas.SessionWithAnswers(**schemas.session_fields(session))


@router.post(
    "/{candidate_id}/resume",
    response_model=schemas.SessionWithAnswers,
    responses=responses(403, 404, 409, 413, s409="`not_paused`, or `session_ended`."),
)
async def resume_session(
    candidate_id: CandidateIdPath,
    body: schemas.ReasonRequest,
    staff: StaffDep,
    sessions: SessionsDep,
) -> schemas.SessionWithAnswers:
    """Start a paused session's clock again (also a reopened one still waiting for its page)."""
    session = await sessions.resume(candidate_id, actor=staff.actor, reason=body.reason)
    return schemas.SessionWithAnswers(**schemas.session_fields(session))


@router.post(
    "/{candidate_id}/reopen",
    response_model=schemas.StartResponse,
    responses=responses(
        403,
        404,
        409,
        413,
        s409="`session_active`: it is still running; `session_purged`: retention removed it.",
    ),
)
async def reopen_session(
    candidate_id: CandidateIdPath,
    body: schemas.ReopenRequest,
    staff: StaffDep,
    sessions: SessionsDep,
    runtime: RuntimeDep,
) -> schemas.StartResponse:
    """Open an ended session again with `minutes` left; its clock starts when the candidate's
    page is next heard from. The earlier ending stays in the timeline; the new opening ends
    exactly once. With a fresh candidate token (the earlier one may have expired)."""
    session = await sessions.reopen(
        candidate_id, body.minutes, actor=staff.actor, reason=body.reason
    )
    token, expires = tokens.for_session(session, runtime.policy, runtime.secret_key)
    return schemas.StartResponse(
        **schemas.session_fields(session), token=token, token_expires_at=expires
    )


@router.put(
    "/{candidate_id}/accommodations",
    response_model=schemas.SessionWithAnswers,
    responses=responses(403, 404, 409, 413, s409="`session_ended`: too late to change."),
)
async def change_accommodations(
    candidate_id: CandidateIdPath,
    body: schemas.AccommodationsChange,
    staff: StaffDep,
    sessions: SessionsDep,
) -> schemas.SessionWithAnswers:
    """Change a session's time multiplier and/or extra minutes, also while it runs: the
    deadline (and the grace of `at_deadline: grace`) follows at once."""
    session = await sessions.set_accommodations(
        candidate_id,
        actor=staff.actor,
        time_multiplier=body.time_multiplier,
        extra_minutes=body.extra_minutes,
        reason=body.reason,
    )
    return schemas.SessionWithAnswers(**schemas.session_fields(session))


@router.post(
    "/{candidate_id}/end",
    response_model=schemas.CompleteResponse,
    responses=responses(403, 404, 413),
)
async def end_session(
    candidate_id: CandidateIdPath, body: schemas.EndRequest, staff: StaffDep, sessions: SessionsDep
) -> schemas.CompleteResponse:
    """Staff end a session: `submit` (completed / admin) or `terminate` (abandoned /
    admin_terminated). On an ended session it returns the stored outcome."""
    return schemas.complete_response(
        *await sessions.end_as_staff(
            candidate_id, body.outcome, actor=staff.actor, reason=body.reason
        )
    )


@router.post(
    "/{candidate_id}/incidents",
    response_model=schemas.IncidentOut,
    status_code=201,
    responses=responses(403, 404, 413),
)
async def record_incident(
    candidate_id: CandidateIdPath,
    body: schemas.IncidentRequest,
    staff: StaffDep,
    sessions: SessionsDep,
) -> schemas.IncidentOut:
    """Record an incident (an irregularity) on a session, running or ended: it is in the
    timeline, flags the session on the dashboard and in the report, and sends
    `session.flagged`. The session's clock and outcome do not change."""
    incident = await sessions.record_incident(
        candidate_id, body.severity, body.reason_code, body.note, actor=staff.actor
    )
    return schemas.incident_out(incident)


class ErasureOut(BaseModel):
    """What was erased. It names no candidate: the audit record keeps just this."""

    erasure_id: str
    erased_at: datetime
    session_status: str
    answers_removed: int
    events_removed: int
    deliveries_removed: int
    webhooks_queued: int = Field(description="session.erased deliveries queued")


@router.delete("/{candidate_id}", response_model=ErasureOut)
async def erase_session(
    candidate_id: CandidateIdPath, staff: StaffDep, sessions: SessionsDep
) -> ErasureOut:
    """Right to erasure: remove the session, its answers, its timeline and every webhook
    delivery about it. An audit record without personal data stays; subscribed endpoints get a
    `session.erased` event that names no candidate."""
    erasure = await sessions.erase(candidate_id, actor=staff.actor)
    return ErasureOut(**{k: v for k, v in erasure.__dict__.items() if k != "actor"})
