"""A session as the outside world sees it: the API's bodies, the webhooks' payloads and the
CLI's JSON all render it from here, so it has one shape (pydantic models: they also make the
OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from invigilator.domain import (
    AtDeadline,
    Method,
    Pages,
    Session,
    Status,
    TabClosePolicy,
    current_deadline,
    remaining_seconds,
)
from invigilator.domain import Clock as DomainClock


class Clock(BaseModel):
    """The server's clock: clients count down from these, never from their own clock."""

    status: Status
    deadline: datetime = Field(
        description="While paused, the deadline as if the clock started again now: it moves "
        "with the pause, and `remaining_seconds` stays what was left at the pause."
    )
    remaining_seconds: int
    server_now: datetime
    paused: bool = Field(False, description="The clock stands still: the test takes no input.")


class PolicyOut(BaseModel):
    """How the session ends (given at its start; null: the deployment's setting)."""

    abandon_after_seconds: float | None
    tab_close: TabClosePolicy | None
    at_deadline: AtDeadline | None
    grace_seconds: float | None
    pages: Pages


class AccommodationsOut(BaseModel):
    time_multiplier: float
    extra_minutes: int


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
    policy: PolicyOut
    accommodations: AccommodationsOut
    paused_at: datetime | None
    paused_seconds: float = Field(description="Seconds the clock stood still before paused_at.")
    awaiting_candidate: bool = Field(
        description="Reopened: the clock starts when the candidate's page is next heard from."
    )
    reopen_count: int
    reopened_at: datetime | None


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
        "deadline": session.current_deadline,
        "remaining_seconds": session.remaining_seconds,
        "server_now": session.server_now,
        "paused": session.is_paused,
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
        "policy": {
            "abandon_after_seconds": session.policy.abandon_after_seconds,
            "tab_close": session.policy.tab_close,
            "at_deadline": session.policy.at_deadline,
            "grace_seconds": session.policy.grace_seconds,
            "pages": session.pages,
        },
        "accommodations": {
            "time_multiplier": session.accommodations.time_multiplier,
            "extra_minutes": session.accommodations.extra_minutes,
        },
        "paused_at": session.paused_at,
        "paused_seconds": session.paused_seconds,
        "awaiting_candidate": session.awaiting_candidate,
        "reopen_count": session.reopen_count,
        "reopened_at": session.reopened_at,
    }
    if answers:
        fields["pending_answers"] = session.pending_answers
        fields["answer_seq"] = session.answer_seq
        fields["page_id"] = session.page_id
    return fields


def from_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A session's view from its columns as a webhook snapshot holds them (JSON, flat): the
    nested policy and accommodations; a snapshot made before they existed shows the defaults."""
    return {
        **row,
        "policy": {
            "abandon_after_seconds": row.get("abandon_after_seconds"),
            "tab_close": row.get("tab_close"),
            "at_deadline": row.get("at_deadline"),
            "grace_seconds": row.get("grace_seconds"),
            "pages": row.get("pages", "single"),
        },
        "accommodations": {
            "time_multiplier": row.get("time_multiplier", 1.0),
            "extra_minutes": row.get("accommodation_minutes", 0),
        },
        "paused_at": row.get("paused_at"),
        "paused_seconds": row.get("paused_seconds", 0.0),
        "awaiting_candidate": row.get("awaiting_candidate", False),
        "reopen_count": row.get("reopen_count", 0),
        "reopened_at": row.get("reopened_at"),
        "paused": row.get("paused_at") is not None,
    }


def with_clock(fields: dict[str, Any]) -> dict[str, Any]:
    """The clock of parsed view fields (datetimes): the current deadline and what is left."""
    if fields["status"] != Status.ACTIVE:
        return fields
    deadline = current_deadline(fields["deadline"], fields["paused_at"], fields["server_now"])
    left = remaining_seconds(deadline, fields["server_now"])
    return {**fields, "deadline": deadline, "remaining_seconds": left}
