"""A session as the outside world sees it: the API's bodies, the webhooks' payloads and the
CLI's JSON all render it from here, so it has one shape (pydantic models: they also make the
OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from invigilator.domain import Clock as DomainClock
from invigilator.domain import Method, Pages, Session, Status


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
    pages: Pages = Field(
        Pages.SINGLE,
        description="The page policy: `single`, the newest page takes over (an older page's "
        "writes are refused with `page_superseded`); `multiple`, pages coexist.",
    )


class SessionWithAnswers(SessionOut):
    pending_answers: dict[str, Any]
    answer_seq: dict[str, int] = Field(
        default_factory=dict,
        description="question -> the `seq` (edit time) of the answer the server holds.",
    )
    page_id: str | None = Field(
        None,
        description="The newest page claim; after the candidate submitted, the page that did.",
    )


def clock(session: Session | DomainClock) -> dict[str, Any]:
    return {
        "status": session.status,
        "deadline": session.deadline,
        "remaining_seconds": session.remaining_seconds,
        "server_now": session.server_now,
    }


def session_fields(session: Session, *, answers: bool = True) -> dict[str, Any]:
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
        "pages": session.pages,
    }
    if answers:
        fields["pending_answers"] = session.pending_answers
        fields["answer_seq"] = session.answer_seq
        fields["page_id"] = session.page_id
    return fields
