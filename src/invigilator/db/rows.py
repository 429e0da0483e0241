"""PostgreSQL rows (dicts from the named queries) as domain records, and the error that says
why a write to an ended session was refused."""

from __future__ import annotations

from invigilator.db.connector import Row
from invigilator.domain import (
    Accommodations,
    AtDeadline,
    Ended,
    Event,
    Incident,
    Method,
    Pages,
    Session,
    SessionEnded,
    SessionPolicy,
    Severity,
    Status,
    TabClosePolicy,
)


def to_session(row: Row) -> Session:
    method = row["completion_method"]
    return Session(
        candidate_id=str(row["candidate_id"]),
        status=Status(row["status"]),
        completion_method=Method(method) if method else None,
        test_start_time=row["test_start_time"],
        test_duration_minutes=row["test_duration_minutes"],
        extra_minutes=row["extra_minutes"],
        deadline=row["deadline"],
        last_heartbeat=row["last_heartbeat"],
        last_activity=row["last_activity"],
        completed_at=row["completed_at"],
        tab_closed_at=row["tab_closed_at"],
        sections_completed=list(row["sections_completed"]),
        planned_sections=row["planned_sections"],
        # Every committed answer where the query read the rows (get_session), else the mirror.
        pending_answers=dict(row["answers"] if "answers" in row else row["pending_answers"]),
        answer_seq={
            k: int(v) for k, v in (row["seqs"] if "seqs" in row else row["answer_seq"]).items()
        },
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        server_now=row["server_now"],
        pages=Pages(row.get("pages") or Pages.SINGLE),
        page_id=row.get("page_id"),
        policy=SessionPolicy(
            abandon_after_seconds=row["abandon_after_seconds"],
            tab_close=TabClosePolicy(row["tab_close"]) if row["tab_close"] else None,
            at_deadline=AtDeadline(row["at_deadline"]) if row["at_deadline"] else None,
            grace_seconds=row["grace_seconds"],
        ),
        accommodations=Accommodations(
            time_multiplier=float(row["time_multiplier"]),
            extra_minutes=int(row["accommodation_minutes"]),
        ),
        paused_at=row["paused_at"],
        paused_seconds=float(row["paused_seconds"]),
        awaiting_candidate=bool(row["awaiting_candidate"]),
        reopen_count=int(row["reopen_count"]),
        reopened_at=row["reopened_at"],
    )


def to_ended(row: Row) -> Ended:
    return Ended(
        candidate_id=str(row["candidate_id"]),
        status=Status(row["status"]),
        completion_method=Method(row["completion_method"]),
        completed_at=row["completed_at"],
    )


def to_event(row: Row) -> Event:
    return Event(
        id=row["id"],
        candidate_id=str(row["candidate_id"]),
        type=row["type"],
        at=row["at"],
        actor=row["actor"],
        detail=row["detail"],
    )


def to_incident(row: Row) -> Incident:
    return Incident(
        id=row["id"],
        candidate_id=str(row["candidate_id"]),
        at=row["at"],
        actor=row["actor"],
        severity=Severity(row["severity"]),
        reason_code=row["reason_code"],
        note=row["note"],
    )


def ended_error(session: Session) -> SessionEnded:
    """Why a write to this ended session was refused, with its outcome."""
    return SessionEnded(
        "this test session has ended",
        session_status=session.status.value,
        completion_method=session.completion_method.value if session.completion_method else None,
        completed_at=session.completed_at.isoformat() if session.completed_at else None,
    )
