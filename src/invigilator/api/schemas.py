"""Request and response bodies (pydantic), which also make the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from invigilator.domain import (
    MAX_CANDIDATE_ID_LENGTH,
    MAX_DURATION_MINUTES,
    MAX_EXTENSION_MINUTES,
    MIN_DURATION_MINUTES,
    Method,
    Session,
    Status,
)
from invigilator.domain import Clock as DomainClock
from invigilator.validation import MAX_NAME_LENGTH, MAX_SEQ, PRINTABLE

CandidateId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CANDIDATE_ID_LENGTH, pattern=PRINTABLE.pattern),
]
SectionName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=PRINTABLE.pattern)
]
Reason = Annotated[str, StringConstraints(max_length=500)]


# --- staff requests -----------------------------------------------------------------------


class StartRequest(BaseModel):
    candidate_id: CandidateId
    # strict: a JSON integer, not `true` (= 1) or "60" (RELIABILITY.md, hostile input)
    duration_minutes: int = Field(60, ge=MIN_DURATION_MINUTES, le=MAX_DURATION_MINUTES, strict=True)
    sections: list[SectionName] | None = Field(
        None, description="The test's sections, in order; others are then refused."
    )
    create_candidate: bool = Field(
        False, description="Create the candidate row when the host application has none."
    )


class ExtendRequest(BaseModel):
    minutes: int = Field(ge=1, le=MAX_EXTENSION_MINUTES, strict=True)
    reason: Reason = ""


class EndRequest(BaseModel):
    outcome: Literal["submit", "terminate"]
    reason: Reason = ""


# --- candidate requests -------------------------------------------------------------------


class HeartbeatRequest(BaseModel):
    active: bool = Field(False, description="The candidate typed, clicked or scrolled since.")


class SectionRequest(BaseModel):
    section: SectionName


class AnswersRequest(BaseModel):
    answers: dict[str, Any] = Field(description="question -> answer (any JSON value)")
    seq: int = Field(
        ge=0,
        le=MAX_SEQ,
        strict=True,  # a JSON integer: `true`, "5" or 5.0 are refused, not read as numbers
        description="Increases with every edit; an older seq never wins.",
    )


ClientEventType = Literal["focus_lost", "focus_regained", "tab_hidden", "tab_visible"]


class ClientEventRequest(BaseModel):
    type: ClientEventType


# --- responses ----------------------------------------------------------------------------


class Clock(BaseModel):
    """The server's clock: clients count down from these, never from their own clock."""

    status: Status
    deadline: datetime
    remaining_seconds: int
    server_now: datetime


class SessionOut(Clock):
    candidate_id: str
    completion_method: Method | None
    completed_at: datetime | None
    test_start_time: datetime
    test_duration_minutes: int
    extra_minutes: int
    last_heartbeat: datetime | None
    last_activity: datetime | None
    sections_completed: list[str]
    planned_sections: list[str] | None
    created_at: datetime
    updated_at: datetime


class SessionWithAnswers(SessionOut):
    pending_answers: dict[str, Any]


class StartResponse(SessionWithAnswers):
    token: str = Field(description="The candidate's bearer token for this session only.")
    token_expires_at: datetime


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class HeartbeatResponse(Clock):
    next_heartbeat_seconds: float


class SaveResponse(Clock):
    committed: bool = True
    seq: int
    applied: list[str] = Field(description="Questions now holding this save's values.")
    superseded: list[str] = Field(description="Questions already at a newer seq, kept.")


class CompleteResponse(SessionWithAnswers):
    already_ended: bool = Field(description="True when an earlier completion had ended it.")


class EventOut(BaseModel):
    id: int
    type: str
    at: datetime
    actor: str
    detail: dict[str, Any]


class Timeline(BaseModel):
    candidate_id: str
    events: list[EventOut]


def clock(session: Session | DomainClock) -> dict[str, Any]:
    return {
        "status": session.status,
        "deadline": session.deadline,
        "remaining_seconds": session.remaining_seconds,
        "server_now": session.server_now,
    }


def session_fields(session: Session, *, answers: bool) -> dict[str, Any]:
    fields = {
        **clock(session),
        "candidate_id": session.candidate_id,
        "completion_method": session.completion_method,
        "completed_at": session.completed_at,
        "test_start_time": session.test_start_time,
        "test_duration_minutes": session.test_duration_minutes,
        "extra_minutes": session.extra_minutes,
        "last_heartbeat": session.last_heartbeat,
        "last_activity": session.last_activity,
        "sections_completed": session.sections_completed,
        "planned_sections": session.planned_sections,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
    }
    if answers:
        fields["pending_answers"] = session.pending_answers
    return fields
