"""The vocabulary of a test session: pure Python, no I/O, imports nothing of ours.

The rules themselves (when a session is open, when it is due, how it ends, the status each
completion method leads to) are SQL functions (sql/migrations/0003_session_rules.sql); this
module is where Python code learns the names, so a new status or method is named here and
ruled there (a test checks the two agree).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


class Status(enum.StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


class Method(enum.StrEnum):
    """How a session ended (`completion_method`); its status: SQL test_session_status_of."""

    MANUAL = "manual"
    TIMER_EXPIRED = "timer_expired"
    TAB_CLOSE = "tab_close"
    ADMIN = "admin"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    ADMIN_TERMINATED = "admin_terminated"
    TIMER_ABANDONED = "timer_abandoned"  # at the deadline, policy `abandon`


class Severity(enum.StrEnum):
    """How serious an incident is (CHECK test_session_incident_severity_check)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class TabClosePolicy(enum.StrEnum):
    """What a tab-close beacon followed by silence means."""

    SUBMIT = "submit"  # completed / tab_close once the tab-close grace has passed
    IGNORE = "ignore"  # nothing special: the abandon rule decides


class Pages(enum.StrEnum):
    """A session's page policy (`pages`): what a second page (tab, window, device) means."""

    SINGLE = "single"  # the newest page takes over; an older page's writes are refused
    MULTIPLE = "multiple"  # pages coexist, each sees the others' answers


class AtDeadline(enum.StrEnum):
    """What happens when a session's time is up (its policy `at_deadline`)."""

    SUBMIT = "submit"  # completed / timer_expired
    GRACE = "grace"  # for the grace period saves are refused, a submit is taken; then as submit
    ABANDON = "abandon"  # abandoned / timer_abandoned


DEFAULT_DURATION_MINUTES = 60  # the guide's column default
MIN_DURATION_MINUTES = 1
MAX_DURATION_MINUTES = 24 * 60  # mirrors CHECK test_session_duration_range
MAX_EXTENSION_MINUTES = 24 * 60
MAX_CANDIDATE_ID_LENGTH = 36
MAX_TIME_MULTIPLIER = 10.0  # mirrors CHECK test_session_accommodations_range
MAX_ACCOMMODATION_MINUTES = 24 * 60
MAX_REOPEN_MINUTES = 24 * 60


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How one session ends, given at its start (the deployment's settings fill what is not
    given). Stored with the session; None only for a row made without the service (the guide's
    own SQL), which then follows the deployment's settings."""

    abandon_after_seconds: float | None
    tab_close: TabClosePolicy | None
    at_deadline: AtDeadline | None
    grace_seconds: float | None


@dataclass(frozen=True, slots=True)
class Accommodations:
    """More time for one candidate: the duration times `time_multiplier`, plus `extra_minutes`;
    staff extensions stack on top, and the multiplier scales the `grace` period too."""

    time_multiplier: float
    extra_minutes: int


@dataclass(frozen=True, slots=True)
class Policy:
    """The timing rules one deployment runs with (their defaults: config.Settings), as the
    rules' SQL functions take them."""

    abandon_after: timedelta
    deadline_grace: timedelta
    tab_close_grace: timedelta
    tab_close_policy: TabClosePolicy
    heartbeat_interval: timedelta
    #: How long pending_answers may lag a running session's answer rows (docs/schema.md).
    answers_mirror_delay: timedelta
    #: A session's defaults for what happens at its deadline (policy `at_deadline`), and the
    #: grace of `grace`: stored with each session the service starts.
    at_deadline: AtDeadline
    grace: timedelta

    def session_policy(
        self,
        *,
        abandon_after_seconds: float | None = None,
        tab_close: TabClosePolicy | None = None,
        at_deadline: AtDeadline | None = None,
        grace_seconds: float | None = None,
    ) -> SessionPolicy:
        """A session's policy: what was given, the deployment's values for the rest."""
        return SessionPolicy(
            abandon_after_seconds=abandon_after_seconds
            if abandon_after_seconds is not None
            else self.abandon_after.total_seconds(),
            tab_close=tab_close or self.tab_close_policy,
            at_deadline=at_deadline or self.at_deadline,
            grace_seconds=grace_seconds
            if grace_seconds is not None
            else self.grace.total_seconds(),
        )

    #: The page policy a session gets when its start names none (config.Settings).
    pages: Pages = Pages.SINGLE

    @property
    def resume_gap(self) -> timedelta:
        """A heartbeat after a silence longer than this records a `resumed` event."""
        return 2 * self.heartbeat_interval

    def sql_params(self) -> dict[str, Any]:
        """The policy as every named query takes it: `%(policy)s`, JSON that the SQL function
        invigilator_rules reads once per statement (migration 0003)."""
        seconds = {
            "abandon_after": self.abandon_after,
            "deadline_grace": self.deadline_grace,
            "tab_close_grace": self.tab_close_grace,
            "resume_gap": self.resume_gap,
        }
        policy: dict[str, Any] = {k: f"{v.total_seconds()} seconds" for k, v in seconds.items()}
        policy["tab_close_submits"] = self.tab_close_policy is TabClosePolicy.SUBMIT
        return {"policy": json.dumps(policy)}


def remaining_seconds(deadline: datetime, now: datetime) -> int:
    """Whole seconds left, never negative: what a countdown shows."""
    return max(0, int((deadline - now).total_seconds()))


def current_deadline(deadline: datetime, paused_at: datetime | None, now: datetime) -> datetime:
    """The deadline as of `now`: a paused session's stored deadline moves at its resume by the
    time the clock stood still, so while paused it is that much later already (and what is
    left stays what was left at the pause)."""
    return deadline + (now - paused_at) if paused_at is not None and now > paused_at else deadline


# --- errors -------------------------------------------------------------------------------


class InvigilatorError(Exception):
    """Base of every domain error. `code` is stable: clients and scripts match on it."""

    code = "invigilator_error"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class SessionNotFound(InvigilatorError):
    code = "not_found"


class CandidateNotFound(InvigilatorError):
    code = "candidate_not_found"


class SessionEnded(InvigilatorError):
    """A write reached a session that has already ended."""

    code = "session_ended"


class SessionAlreadyEnded(InvigilatorError):
    """A new start was asked for a candidate whose session has ended."""

    code = "session_already_ended"


class PageSuperseded(InvigilatorError):
    """A write from a page that a newer page of the same session took over from (policy
    `single`): that page must claim the session again to go on."""

    code = "page_superseded"


class SessionNotEnded(InvigilatorError):
    """Reopen was asked for a session that is still running."""

    code = "session_active"


class AlreadyPaused(InvigilatorError):
    code = "already_paused"


class NotPaused(InvigilatorError):
    code = "not_paused"


class TimeUp(InvigilatorError):
    """An answer reached a session past its deadline that still takes a submit (policy
    `grace`): nothing is saved, the candidate may only submit."""

    code = "time_up"


class SessionPurged(InvigilatorError):
    """Retention removed this ended session's answers and timeline: it cannot be reopened."""

    code = "session_purged"


class InvalidInput(InvigilatorError):
    code = "validation_error"


class PayloadTooLarge(InvigilatorError):
    code = "payload_too_large"


class DatabaseUnavailable(InvigilatorError):
    code = "database_unavailable"


class ConfigurationError(InvigilatorError):
    """The settings cannot work together (said when they load, before anything starts)."""

    code = "configuration_error"


class SchemaProblem(InvigilatorError):
    """The database is not in a state the schema can be installed into (prerequisites)."""

    code = "schema_problem"


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One test_session row as the service sees it, with the database clock at read time."""

    candidate_id: str
    status: Status
    completion_method: Method | None
    test_start_time: datetime
    test_duration_minutes: int
    extra_minutes: int
    deadline: datetime
    last_heartbeat: datetime | None
    last_activity: datetime | None
    completed_at: datetime | None
    tab_closed_at: datetime | None
    sections_completed: list[str]
    planned_sections: list[str] | None
    pending_answers: dict[str, Any]
    answer_seq: dict[str, int]
    created_at: datetime
    updated_at: datetime
    server_now: datetime
    policy: SessionPolicy
    accommodations: Accommodations
    #: The clock stands still since (a pause, or a reopening waiting for its page).
    paused_at: datetime | None
    #: Every second the clock stood still before (it moved the deadline).
    paused_seconds: float
    awaiting_candidate: bool
    reopen_count: int
    reopened_at: datetime | None
    pages: Pages = Pages.SINGLE
    #: The newest page claim (None until a page claims; after a candidate's submit: its page).
    page_id: str | None = None

    @property
    def is_active(self) -> bool:
        return self.status is Status.ACTIVE

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def current_deadline(self) -> datetime:
        return current_deadline(self.deadline, self.paused_at, self.server_now)

    @property
    def remaining_seconds(self) -> int:
        return remaining_seconds(self.current_deadline, self.server_now) if self.is_active else 0


@dataclass(frozen=True, slots=True)
class Clock:
    """A session's status and timer as of `server_now`: what a heartbeat answers."""

    candidate_id: str
    status: Status
    deadline: datetime
    server_now: datetime
    paused_at: datetime | None = None

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def current_deadline(self) -> datetime:
        return current_deadline(self.deadline, self.paused_at, self.server_now)

    @property
    def remaining_seconds(self) -> int:
        if self.status is not Status.ACTIVE:
            return 0
        return remaining_seconds(self.current_deadline, self.server_now)


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What an answer save committed: `applied` keys now hold this save's values; `superseded`
    keys were already at a newer `seq` (a later edit) and kept it: the page shows `current`."""

    clock: Clock
    seq: int
    applied: list[str]
    superseded: list[str]
    #: What the server holds for each superseded question: {question: (value, seq)}.
    current: dict[str, tuple[Any, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claim:
    """A page's claim on a session: the session as the page resumes it, and how many pages
    the claim took over from (policy `single`)."""

    session: Session
    superseded: int


@dataclass(frozen=True, slots=True)
class Ended:
    """A session the sweeper (or lazy expiry) has just finalized."""

    candidate_id: str
    status: Status
    completion_method: Method
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class Incident:
    """An irregularity staff or the host application recorded on a session."""

    id: int
    candidate_id: str
    at: datetime
    actor: str
    severity: Severity
    reason_code: str
    note: str


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    candidate_id: str
    type: str
    at: datetime
    actor: str
    detail: dict[str, Any]
