"""The service layer: the operations people name — start a session, read it, beat, save
answers, complete a section, record an event, close a tab, submit, end it as staff, extend it,
pause and resume it, reopen it, change its accommodations, sweep, read its timeline — each one
transaction, and safe to retry where a retry can happen.

The HTTP routes, the heartbeat fast path, the CLI, the sweeper and the demo call these; none of
them reaches the store. Input rules that the database cannot state well (sizes, depth, names)
are checked here, before anything is written, so every caller gets the same refusals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from invigilator import analytics
from invigilator import bulk as bulk_actions
from invigilator.domain import (
    DEFAULT_DURATION_MINUTES,
    MAX_ACCOMMODATION_MINUTES,
    MAX_REOPEN_MINUTES,
    MAX_TIME_MULTIPLIER,
    Accommodations,
    AtDeadline,
    Claim,
    Clock,
    Ended,
    Event,
    Incident,
    InvalidInput,
    Method,
    Pages,
    Policy,
    SaveResult,
    Session,
    Severity,
    Status,
    TabClosePolicy,
)
from invigilator.heartbeats import HeartbeatBatcher
from invigilator.privacy import Erasure, PrivacyStore, Purged
from invigilator.store import SessionStore
from invigilator.validation import (
    MAX_USER_AGENT_LENGTH,
    Limits,
    check_answers,
    check_candidate_id,
    check_incident,
    check_name,
    check_page_id,
)

#: How staff may end a session, and the completion method each outcome is recorded with.
STAFF_OUTCOMES: dict[str, Method] = {"submit": Method.ADMIN, "terminate": Method.ADMIN_TERMINATED}
StaffOutcome = Literal["submit", "terminate"]
#: The actions POST /api/v1/sessions/bulk knows (`Sessions.bulk_step` says what each does).
BULK_ACTIONS = ("pause", "resume", "extend", "end", "incident")


@dataclass(frozen=True, slots=True)
class Started:
    session: Session
    created: bool  # False: the candidate's active session, returned as it is


class Sessions:
    """Every operation on test sessions. `heartbeats` batches heartbeats (HeartbeatBatcher);
    without one (commands, tests), each heartbeat is a batch of one."""

    def __init__(
        self, store: SessionStore, limits: Limits, heartbeats: HeartbeatBatcher | None = None
    ) -> None:
        self.store = store
        self.limits = limits
        self.heartbeats = heartbeats
        self.privacy = PrivacyStore(store.pool)

    @property
    def policy(self) -> Policy:
        return self.store.policy

    # --- staff ------------------------------------------------------------------------------

    async def start(
        self,
        candidate_id: str,
        *,
        actor: str,
        duration_minutes: int = DEFAULT_DURATION_MINUTES,
        sections: list[str] | None = None,
        create_candidate: bool = False,
        abandon_after_seconds: float | None = None,
        tab_close: TabClosePolicy | None = None,
        at_deadline: AtDeadline | None = None,
        grace_seconds: float | None = None,
        time_multiplier: float = 1.0,
        extra_minutes: int = 0,
        pages: Pages | None = None,
    ) -> Started:
        """Start a candidate's session with its own policy (what is not given: the settings')
        and accommodations; repeating it for an active session returns that one as it is.
        `pages`: the session's page policy (default: the deployment's, Settings.pages)."""
        check_candidate_id(candidate_id)
        _check_accommodations(time_multiplier, extra_minutes)
        if abandon_after_seconds is not None and not abandon_after_seconds > 0:
            raise InvalidInput(
                "abandon_after_seconds must be above 0", field="abandon_after_seconds"
            )
        if grace_seconds is not None and not grace_seconds >= 0:
            raise InvalidInput("grace_seconds must be 0 or more", field="grace_seconds")
        if sections is not None:
            if len(sections) > self.limits.max_sections:
                raise InvalidInput(f"at most {self.limits.max_sections} sections", field="sections")
            for section in sections:
                check_name(section, "section")
        session, created = await self.store.start(
            candidate_id,
            duration_minutes=duration_minutes,
            planned_sections=list(dict.fromkeys(sections)) if sections else None,
            create_candidate=create_candidate,
            actor=actor,
            pages=pages,
            policy=self.policy.session_policy(
                abandon_after_seconds=abandon_after_seconds,
                tab_close=tab_close,
                at_deadline=at_deadline,
                grace_seconds=grace_seconds,
            ),
            accommodations=Accommodations(time_multiplier, extra_minutes),
        )
        return Started(session, created)

    async def extend(
        self, candidate_id: str, minutes: int, *, actor: str, reason: str | None = None
    ) -> Session:
        """Give a running session extra minutes; the deadline moves at once for everybody."""
        await self.store.extend(candidate_id, minutes, actor=actor, reason=reason or None)
        return await self.store.get(candidate_id)  # with every committed answer

    async def pause(self, candidate_id: str, *, actor: str, reason: str | None = None) -> Session:
        """Stop a running session's clock: no ending rule fires until it is resumed; its page
        still beats and saves what was typed, and learns of the pause at its next heartbeat."""
        await self.store.pause(candidate_id, actor=actor, reason=reason or None)
        return await self.store.get(candidate_id)

    async def resume(self, candidate_id: str, *, actor: str, reason: str | None = None) -> Session:
        """Start a paused session's clock again; its deadline has moved by the paused time."""
        await self.store.resume(candidate_id, actor=actor, reason=reason or None)
        return await self.store.get(candidate_id)

    async def reopen(
        self, candidate_id: str, minutes: int, *, actor: str, reason: str | None = None
    ) -> Session:
        """Open an ended session again with `minutes` left; its clock starts when its page is
        next heard from. The earlier ending stays in the timeline."""
        if not 1 <= minutes <= MAX_REOPEN_MINUTES:
            raise InvalidInput(f"minutes must be 1–{MAX_REOPEN_MINUTES}", field="minutes")
        await self.store.reopen(candidate_id, minutes, actor=actor, reason=reason or None)
        return await self.store.get(candidate_id)

    async def set_accommodations(
        self,
        candidate_id: str,
        *,
        actor: str,
        time_multiplier: float | None = None,
        extra_minutes: int | None = None,
        reason: str | None = None,
    ) -> Session:
        """Change a running session's accommodations (also while it runs); the deadline, and
        the grace of policy `grace`, follow at once."""
        if time_multiplier is None and extra_minutes is None:
            raise InvalidInput("give time_multiplier, extra_minutes or both", field="body")
        _check_accommodations(
            1.0 if time_multiplier is None else time_multiplier,
            0 if extra_minutes is None else extra_minutes,
        )
        await self.store.set_accommodations(
            candidate_id,
            time_multiplier=time_multiplier,
            extra_minutes=extra_minutes,
            actor=actor,
            reason=reason or None,
        )
        return await self.store.get(candidate_id)

    async def end_as_staff(
        self, candidate_id: str, outcome: StaffOutcome, *, actor: str, reason: str | None = None
    ) -> tuple[Session, bool]:
        """End a session now: `submit` or `terminate`. On an ended session: its outcome."""
        return await self.store.complete(
            candidate_id, STAFF_OUTCOMES[outcome], actor=actor, reason=reason or None
        )

    async def record_incident(
        self,
        candidate_id: str,
        severity: Severity | str,
        reason_code: str,
        note: str = "",
        *,
        actor: str,
    ) -> Incident:
        """Record an irregularity on a session, running or ended: a timeline event and a
        session.flagged webhook; the session's clock and outcome do not change."""
        check_candidate_id(candidate_id)
        if severity not in set(Severity):
            raise InvalidInput("severity must be low, medium or high", field="severity")
        check_incident(reason_code, note)
        return await self.store.record_incident(
            candidate_id, Severity(severity), reason_code, note, actor=actor
        )

    # --- bulk actions -------------------------------------------------------------------------

    def bulk_step(self, action: str, fields: Mapping[str, Any], *, actor: str) -> bulk_actions.Step:
        """What `action` does to one session: the operation of its single-session route, with
        the action's fields (`minutes`, `outcome`, `severity`/`reason_code`/`note`; `reason`),
        whose input is checked here once, before any session is touched."""
        reason = str(fields.get("reason") or "") or None
        if action == "extend":
            minutes = fields.get("minutes")
            if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 1:
                raise InvalidInput("extend needs whole minutes, at least 1", field="minutes")
        elif action == "end":
            if fields.get("outcome") not in STAFF_OUTCOMES:
                raise InvalidInput("end needs an outcome: submit or terminate", field="outcome")
        elif action in ("pause", "resume"):
            pass  # a reason only
        elif action == "incident":
            if fields.get("severity") not in set(Severity):
                raise InvalidInput("severity must be low, medium or high", field="severity")
            check_incident(str(fields.get("reason_code", "")), str(fields.get("note") or ""))
        else:
            raise InvalidInput(f"action must be one of {', '.join(BULK_ACTIONS)}", field="action")
        # One line per action: a new session operation joins the bulk route here.
        steps: dict[str, bulk_actions.Step] = {
            "pause": lambda cid: bulk_actions.session_changed(
                self.pause(cid, actor=actor, reason=reason)
            ),
            "resume": lambda cid: bulk_actions.session_changed(
                self.resume(cid, actor=actor, reason=reason)
            ),
            "extend": lambda cid: bulk_actions.session_changed(
                self.extend(cid, fields["minutes"], actor=actor, reason=reason)
            ),
            "end": lambda cid: bulk_actions.ended(
                self.end_as_staff(cid, fields["outcome"], actor=actor, reason=reason)
            ),
            "incident": lambda cid: bulk_actions.recorded(
                self.record_incident(
                    cid,
                    fields["severity"],
                    fields["reason_code"],
                    str(fields.get("note") or ""),
                    actor=actor,
                )
            ),
        }
        return steps[action]

    async def bulk(
        self,
        action: str,
        fields: Mapping[str, Any],
        *,
        actor: str,
        candidate_ids: Sequence[str] | None = None,
        where: bulk_actions.Filter | None = None,
    ) -> bulk_actions.Report:
        """Apply `action` to the sessions named (`candidate_ids`) or matched (`where`), each in
        a transaction of its own; the report has one item per session, in order. More than
        `limits.max_bulk_sessions` is refused whole, before anything changes."""
        step = self.bulk_step(action, fields, actor=actor)
        targets = await self._bulk_targets(candidate_ids, where)
        items = await bulk_actions.run(step, targets, self.limits.bulk_concurrency)
        return bulk_actions.Report(action, items)

    async def _bulk_targets(
        self, candidate_ids: Sequence[str] | None, where: bulk_actions.Filter | None
    ) -> list[str]:
        bound = self.limits.max_bulk_sessions
        if (candidate_ids is None) == (where is None):
            raise InvalidInput("name the sessions: candidate_ids or filter (one of them)")
        if candidate_ids is not None:
            for candidate_id in candidate_ids:
                check_candidate_id(candidate_id)
            unique = list(dict.fromkeys(candidate_ids))  # each session acted on once
            if len(unique) > bound:
                raise InvalidInput(
                    f"at most {bound} sessions per bulk action", field="candidate_ids", limit=bound
                )
            return unique
        assert where is not None
        since, until = where.started_since, where.started_until
        if since is not None and until is not None and since > until:
            raise InvalidInput("started_since is after started_until", field="filter")
        found = await self.store.select_sessions(
            status=where.status, since=since, until=until, limit=bound + 1
        )
        if len(found) > bound:
            raise InvalidInput(
                f"the filter matches more than {bound} sessions; narrow it",
                field="filter",
                limit=bound,
            )
        return found

    async def list_sessions(
        self, *, limit: int, status: Status | None = None, after: tuple[datetime, str] | None = None
    ) -> list[Session]:
        """A page of sessions, newest start first; `after`: the last one of the page before."""
        return await self.store.list_sessions(status=status, limit=limit, after=after)

    async def timeline(self, candidate_id: str) -> list[Event]:
        return await self.store.events(candidate_id)

    async def find_active(self, limit: int = 1000) -> list[Session]:
        return await self.store.find_active(limit)

    async def find_abandoned(
        self, silent_for: timedelta | None = None, limit: int = 1000
    ) -> list[Session]:
        return await self.store.find_abandoned(silent_for, limit)

    async def erase(self, candidate_id: str, *, actor: str) -> Erasure:
        """Right to erasure: the session, its answers, timeline and webhook deliveries go; an
        audit record without personal data stays, and a session.erased webhook is queued."""
        check_candidate_id(candidate_id)
        return await self.privacy.erase(candidate_id, actor=actor)

    async def end_staff_sign_in(self, sign_in_id: str, expires_at: datetime) -> None:
        """A dashboard sign-out: the cookie is refused by every process from now on."""
        await self.privacy.sign_out(sign_in_id, expires_at)

    async def staff_sign_in_ended(self, sign_in_id: str) -> bool:
        return await self.privacy.is_signed_out(sign_in_id)

    # --- the candidate's page -----------------------------------------------------------------
    # `page_id`: the page (tab, window, device) that acts, as it claimed the session. A page a
    # newer one took over from (policy `single`) is refused with PageSuperseded; None: a caller
    # that is no page (API scripts), which the page rule leaves alone.

    async def read(self, candidate_id: str) -> Session:
        """The session as it truly is now (a due session is ended first: lazy expiry)."""
        return await self.store.get(candidate_id)

    async def claim_page(
        self,
        candidate_id: str,
        page_id: str,
        *,
        user_agent: str | None = None,
        client_address: str | None = None,
    ) -> Claim:
        """A page opens the session (a new claim, or the same page again: "continue here"); with
        the policy `single` it takes over from every other page. Returns the session to resume."""
        check_page_id(page_id)
        return await self.store.claim_page(
            candidate_id,
            page_id,
            user_agent=user_agent[:MAX_USER_AGENT_LENGTH] if user_agent else None,
            client_address=client_address,
        )

    async def heartbeat(self, candidate_id: str, *, active: bool = False) -> Clock:
        """The page is alive; returns the clock once committed. A refusal raises its reason.
        A heartbeat carries no page: it says the candidate is there, whichever page beats."""
        if self.heartbeats is not None:
            return await self.heartbeats.beat(candidate_id, active=active)
        s = await self.store.heartbeat(candidate_id, active=active)
        return Clock(s.candidate_id, s.status, s.deadline, s.server_now, s.paused_at)

    async def record_activity(self, candidate_id: str, *, page_id: str | None = None) -> Session:
        return await self.store.record_activity(candidate_id, page_id=_page(page_id))

    async def save_answers(
        self, candidate_id: str, answers: dict[str, Any], seq: int, *, page_id: str | None = None
    ) -> SaveResult:
        """Merge answers; returns once committed. Per question the highest `seq` wins, and
        `seq` is when the edit was made (docs/schema.md): an older edit never wins."""
        check_answers(answers, self.limits)
        return await self.store.save_answers(
            candidate_id,
            answers,
            seq,
            max_total_bytes=self.limits.max_answers_bytes,
            page_id=_page(page_id),
        )

    async def complete_section(
        self, candidate_id: str, section: str, *, page_id: str | None = None
    ) -> Session:
        check_name(section, "section")
        return await self.store.complete_section(candidate_id, section, page_id=_page(page_id))

    async def record_event(
        self, candidate_id: str, event_type: str, *, page_id: str | None = None
    ) -> None:
        """A browser-reported event (focus, visibility) in the session's timeline."""
        await self.store.record_client_event(candidate_id, event_type, page_id=_page(page_id))

    async def tab_close(self, candidate_id: str, *, page_id: str | None = None) -> Session:
        return await self.store.tab_close(candidate_id, page_id=_page(page_id))

    async def complete(
        self, candidate_id: str, *, page_id: str | None = None
    ) -> tuple[Session, bool]:
        """The candidate submits. Idempotent: a repeat returns the stored outcome."""
        return await self.store.complete(
            candidate_id, Method.MANUAL, actor="candidate", page_id=_page(page_id)
        )

    # --- background ---------------------------------------------------------------------------

    async def sweep(self, batch_size: int) -> list[Ended]:
        """End up to `batch_size` due sessions in one transaction (one sweeper batch), then
        bring up to as many lagging pending_answers mirrors up to date."""
        ended = await self.store.finalize_due(batch_size)
        await self.store.sync_lagging_answers(batch_size)
        return ended

    async def purge_ended(self, keep: timedelta, batch_size: int) -> Purged:
        """Retention: the answers and timelines of up to `batch_size` sessions that ended more
        than `keep` ago go, in one transaction (one sweeper batch); the rows stay."""
        return await self.privacy.purge_ended(keep, batch_size)

    async def roll_up(self, limit: int) -> analytics.RolledUp:
        """The report's rollup (migration 0014): up to `limit` quarter hours of ended sessions
        kept as one row each, for the summary to read instead of their sessions. Nothing on a
        distributed database, which keeps no rollup."""
        if await self.store.distributed():
            return analytics.RolledUp(0, 0)
        return await analytics.roll_up(self.store.pool, self.policy, limit=limit)


def _page(page_id: str | None) -> str | None:
    return None if page_id is None else check_page_id(page_id)


def _check_accommodations(time_multiplier: float, extra_minutes: int) -> None:
    if not 0 < time_multiplier <= MAX_TIME_MULTIPLIER:
        raise InvalidInput(
            f"time_multiplier must be above 0 and at most {MAX_TIME_MULTIPLIER:g}",
            field="time_multiplier",
        )
    if not 0 <= extra_minutes <= MAX_ACCOMMODATION_MINUTES:
        raise InvalidInput(
            f"extra_minutes must be 0–{MAX_ACCOMMODATION_MINUTES}", field="extra_minutes"
        )
