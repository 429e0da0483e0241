"""Request and response bodies (pydantic), which also make the OpenAPI document. The session
itself, as every outside reader sees it, is in invigilator.views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from invigilator.domain import (
    MAX_ACCOMMODATION_MINUTES,
    MAX_CANDIDATE_ID_LENGTH,
    MAX_DURATION_MINUTES,
    MAX_EXTENSION_MINUTES,
    MAX_REOPEN_MINUTES,
    MAX_TIME_MULTIPLIER,
    MIN_DURATION_MINUTES,
    AtDeadline,
    Incident,
    Pages,
    Policy,
    Session,
    Status,
    TabClosePolicy,
)
from invigilator.domain import Clock as DomainClock
from invigilator.validation import (
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_PAGE_ID_LENGTH,
    MAX_REASON_CODE_LENGTH,
    MAX_SEQ,
    NAME_PATTERN,
)
from invigilator.views import Clock as Clock
from invigilator.views import SessionOut as SessionOut
from invigilator.views import SessionWithAnswers as SessionWithAnswers
from invigilator.views import clock as clock
from invigilator.views import session_fields as session_fields

# One alphabet for ids and names (validation.NAME_CHARACTERS), also in the OpenAPI document.
CandidateId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_CANDIDATE_ID_LENGTH, pattern=NAME_PATTERN)
]
SectionName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
]
Reason = Annotated[str, StringConstraints(max_length=500)]
PageId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_PAGE_ID_LENGTH, pattern=NAME_PATTERN)
]
PAGE_ID_DESCRIPTION = (
    "The page that acts, as it claimed the session (POST …/pages). With the page policy "
    "`single`, a page a newer one took over from is refused with `page_superseded`. Without "
    "it the page rule does not apply (a caller that is no page)."
)
PAGE_ID_FIELD = Field(None, description=PAGE_ID_DESCRIPTION)
ReasonCode = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REASON_CODE_LENGTH, pattern=NAME_PATTERN)
]
Note = Annotated[str, StringConstraints(max_length=MAX_NOTE_LENGTH)]
SeverityName = Literal["low", "medium", "high"]


# --- staff requests -----------------------------------------------------------------------


# A JSON number (an integer is one too), never a string or a boolean.
Multiplier = Annotated[float, Field(gt=0, le=MAX_TIME_MULTIPLIER, strict=True)]
AccommodationMinutes = Annotated[int, Field(ge=0, le=MAX_ACCOMMODATION_MINUTES, strict=True)]


class PolicyRequest(BaseModel):
    """The session's own policy; what is not given comes from the deployment's settings."""

    abandon_after_seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600, strict=True)
    tab_close: TabClosePolicy | None = None
    at_deadline: AtDeadline | None = None
    grace_seconds: float | None = Field(
        default=None, ge=0, le=24 * 3600, strict=True, description="For `at_deadline: grace`."
    )
    pages: Pages | None = Field(
        default=None,
        description="The page policy: `single` (the newest page takes over) or `multiple` "
        "(pages coexist). Default: INVIGILATOR_PAGES. Also accepted at the request's top level.",
    )


class AccommodationsRequest(BaseModel):
    time_multiplier: Multiplier = 1.0
    extra_minutes: AccommodationMinutes = 0


class StartRequest(BaseModel):
    candidate_id: CandidateId
    # strict: a JSON integer, not `true` (= 1) or "60" (RELIABILITY.md, hostile input)
    duration_minutes: int = Field(60, ge=MIN_DURATION_MINUTES, le=MAX_DURATION_MINUTES, strict=True)
    sections: list[SectionName] | None = Field(
        None, description="The test's sections, in order; others are then refused."
    )
    # strict booleans: JSON true/false only, not "yes" or 1
    create_candidate: bool = Field(
        False,
        strict=True,
        description="Create the candidate row when the host application has none.",
    )
    pages: Pages | None = Field(
        None,
        description="The page policy, as `policy.pages` (either place; not two values).",
    )
    policy: PolicyRequest | None = None
    accommodations: AccommodationsRequest | None = None

    @model_validator(mode="after")
    def _one_page_policy(self) -> StartRequest:
        if self.pages and self.policy and self.policy.pages and self.pages != self.policy.pages:
            raise ValueError("pages and policy.pages differ: give the page policy once")
        return self

    @property
    def page_policy(self) -> Pages | None:
        return (self.policy.pages if self.policy else None) or self.pages


class ExtendRequest(BaseModel):
    minutes: int = Field(ge=1, le=MAX_EXTENSION_MINUTES, strict=True)
    reason: Reason = ""


class ReasonRequest(BaseModel):
    reason: Reason = ""


class ReopenRequest(BaseModel):
    minutes: int = Field(
        ge=1,
        le=MAX_REOPEN_MINUTES,
        strict=True,
        description="Time left, counted from when the candidate's page is next heard from.",
    )
    reason: Reason = ""


class AccommodationsChange(BaseModel):
    """What to change (at least one); the other is kept."""

    time_multiplier: Multiplier | None = None
    extra_minutes: AccommodationMinutes | None = None
    reason: Reason = ""


class EndRequest(BaseModel):
    outcome: Literal["submit", "terminate"]
    reason: Reason = ""


class IncidentRequest(BaseModel):
    severity: SeverityName
    reason_code: ReasonCode = Field(
        description="What happened, as a name the host app counts by (e.g. `second_person`)."
    )
    note: Note = ""


class BulkFilter(BaseModel):
    status: Status | None = None
    started_since: AwareDatetime | None = Field(None, description="Started at or after.")
    started_until: AwareDatetime | None = Field(None, description="Started before.")


class _BulkTargets(BaseModel):
    candidate_ids: list[CandidateId] | None = Field(
        None, description="The sessions, by candidate; a repeated id is acted on once."
    )
    filter: BulkFilter | None = Field(None, description="Or: the sessions that match this.")


class BulkPause(_BulkTargets):
    action: Literal["pause"]
    reason: Reason = ""


class BulkResume(_BulkTargets):
    action: Literal["resume"]
    reason: Reason = ""


class BulkExtend(_BulkTargets):
    action: Literal["extend"]
    minutes: int = Field(ge=1, le=MAX_EXTENSION_MINUTES, strict=True)
    reason: Reason = ""


class BulkEnd(_BulkTargets):
    action: Literal["end"]
    outcome: Literal["submit", "terminate"]
    reason: Reason = ""


class BulkIncident(_BulkTargets):
    action: Literal["incident"]
    severity: SeverityName
    reason_code: ReasonCode
    note: Note = ""


# One model per action (the OpenAPI document shows each action's fields).
BulkRequest = Annotated[
    BulkPause | BulkResume | BulkExtend | BulkEnd | BulkIncident, Field(discriminator="action")
]


# --- candidate requests -------------------------------------------------------------------


class HeartbeatRequest(BaseModel):
    active: bool = Field(
        False, strict=True, description="The candidate typed, clicked or scrolled since."
    )


class SectionRequest(BaseModel):
    section: SectionName
    page_id: PageId | None = PAGE_ID_FIELD


class PageClaimRequest(BaseModel):
    page_id: PageId = Field(description="A new random id per page (the browser client's).")


class AnswersRequest(BaseModel):
    answers: dict[str, Any] = Field(description="question -> answer (any JSON value)")
    seq: int = Field(
        ge=0,
        le=MAX_SEQ,
        strict=True,  # a JSON integer: `true`, "5" or 5.0 are refused, not read as numbers
        description="The time the edit was made, on the server's clock, in epoch "
        "milliseconds (the browser client's), or any count that increases with every edit: "
        "per question the highest seq wins, so an older edit never beats a newer one, "
        "whatever order they arrive in.",
    )
    page_id: PageId | None = PAGE_ID_FIELD


ClientEventType = Literal["focus_lost", "focus_regained", "tab_hidden", "tab_visible"]


class ClientEventRequest(BaseModel):
    type: ClientEventType
    page_id: PageId | None = PAGE_ID_FIELD


# --- responses ----------------------------------------------------------------------------


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
    current: dict[str, Any] = Field(
        default_factory=dict,
        description="For each superseded question, the newer answer the server holds: the "
        "page shows it in place of its own.",
    )
    current_seq: dict[str, int] = Field(
        default_factory=dict, description="The seq of each answer in `current`."
    )


class PageClaimResponse(SessionWithAnswers):
    superseded_pages: int = Field(
        description="How many other pages this claim took over from (policy `single`)."
    )


class CompleteResponse(SessionWithAnswers):
    already_ended: bool = Field(description="True when an earlier completion had ended it.")


class IncidentOut(BaseModel):
    id: int
    candidate_id: str
    at: datetime
    actor: str
    severity: SeverityName
    reason_code: str
    note: str


def incident_out(incident: Incident) -> IncidentOut:
    return IncidentOut(
        id=incident.id,
        candidate_id=incident.candidate_id,
        at=incident.at,
        actor=incident.actor,
        severity=incident.severity.value,
        reason_code=incident.reason_code,
        note=incident.note,
    )


class BulkItemOut(BaseModel):
    candidate_id: str
    result: Literal["changed", "unchanged", "refused"] = Field(
        description="`unchanged`: a harmless repeat (ending an ended session)."
    )
    status: Status | None = Field(description="The session's status afterwards, when known.")
    code: str | None = Field(description="Why it was refused: the problem code of its route.")
    message: str | None


class BulkOut(BaseModel):
    action: str
    requested: int = Field(description="Sessions acted on (each once): the items.")
    changed: int
    unchanged: int
    refused: int
    items: list[BulkItemOut]


class EventOut(BaseModel):
    id: int
    type: str
    at: datetime
    actor: str
    detail: dict[str, Any]


class Timeline(BaseModel):
    candidate_id: str
    events: list[EventOut]


def heartbeat_response(clock_: DomainClock, policy: Policy) -> HeartbeatResponse:
    """What a heartbeat answers, on the route and on the fast path (validated there)."""
    return HeartbeatResponse.model_construct(
        **clock(clock_), next_heartbeat_seconds=policy.heartbeat_interval.total_seconds()
    )


def complete_response(session: Session, ended_now: bool) -> CompleteResponse:
    # Not ended: a reopened session's repeated submit from before it was reopened.
    return CompleteResponse(
        **session_fields(session), already_ended=not ended_now and not session.is_active
    )
