"""`invigilator session show`: one candidate's session and its timeline, as tables or JSON.
Answer contents are never printed: only which questions have an answer.
`invigilator session erase`: the right to erasure, as the staff API's DELETE does it.
`invigilator session incident`: record an incident, as the staff API's POST …/incidents does.
`invigilator session pause|resume|reopen|extend`: the staff controls, as the API's routes do
them (one service call each), signed `cli` in the timeline."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from invigilator import views
from invigilator.cli.app import HELP_LAYOUT, CommandFailed, app, database, out
from invigilator.cli.connect import migrate_embedded, open_sessions
from invigilator.cli.options import DatabaseUrl
from invigilator.config import Settings
from invigilator.db.selection import Database
from invigilator.domain import (
    MAX_EXTENSION_MINUTES,
    MAX_REOPEN_MINUTES,
    Event,
    Incident,
    Session,
    SessionNotFound,
    Severity,
)
from invigilator.privacy import Erasure
from invigilator.service import Sessions
from invigilator.validation import check_candidate_id

session_app = typer.Typer(help="Look at one candidate's test session.", **HELP_LAYOUT)
app.add_typer(session_app, name="session")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _shown(value: datetime | None) -> str | None:
    """A time for people: to the second, in UTC (the shortest unambiguous form)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@session_app.command("show", short_help="A session and its timeline (never the answers).")
def session_show(
    candidate_id: Annotated[str, typer.Argument(help="The candidate whose session to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """A session (status, times, sections, which questions have answers) and its timeline.

    Like every read, it sees a session that is due as ended (and records the end).

    Answer contents are never shown. Exit code 1 when the candidate has no session.
    """
    settings = Settings()
    db = database(database_url, settings)
    migrate_embedded(db)
    try:
        session, events = asyncio.run(_load(db, settings, candidate_id))
    except SessionNotFound:
        raise CommandFailed(f"no test session for candidate {candidate_id!r}") from None
    if as_json:
        payload = {**session_summary(session), "events": [event_summary(e) for e in events]}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return
    out.print(_session_table(session))
    out.print(_timeline_table(session.candidate_id, events))


@session_app.command("erase", short_help="Erase a session: answers, timeline, webhooks.")
def session_erase(
    candidate_id: Annotated[str, typer.Argument(help="The candidate whose session to erase.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Erase a candidate's session: its answers, its timeline and every webhook delivery about
    it. An audit record without personal data stays, and a session.erased webhook is queued.

    Exit code 1 when the candidate has no session, or when not confirmed.
    """
    settings = Settings()
    db = database(database_url, settings)
    check_candidate_id(candidate_id)
    if not yes and not typer.confirm(f"Erase the test session of {candidate_id!r}?"):
        raise CommandFailed("not erased (confirm, or pass --yes)")
    migrate_embedded(db)
    try:
        erasure = asyncio.run(_erase(db, settings, candidate_id))
    except SessionNotFound:
        raise CommandFailed(f"no test session for candidate {candidate_id!r}") from None
    if as_json:
        payload = {**erasure.__dict__, "erased_at": erasure.erased_at.isoformat()}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    out.print(
        f"erased {candidate_id}: {erasure.answers_removed} answer(s), "
        f"{erasure.events_removed} event(s), {erasure.deliveries_removed} webhook "
        f"delivery(ies); erasure id {erasure.erasure_id}",
        highlight=False,
    )


CandidateArg = Annotated[str, typer.Argument(help="The candidate whose session to act on.")]
ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (kept in the session's timeline).", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the session as JSON.")]
Action = Callable[[Sessions], Awaitable[Session]]


def _control(candidate_id: str, as_json: bool, database_url: str | None, action: Action) -> None:
    """Every staff control: one service call on the session, then the session as it is."""
    settings = Settings()
    db = database(database_url, settings)
    check_candidate_id(candidate_id)
    migrate_embedded(db)
    try:
        session = asyncio.run(_run_control(db, settings, action))
    except SessionNotFound:
        raise CommandFailed(f"no test session for candidate {candidate_id!r}") from None
    if as_json:
        sys.stdout.write(json.dumps(session_summary(session), indent=2, default=str) + "\n")
        return
    out.print(_session_table(session))


async def _run_control(db: Database, settings: Settings, action: Action) -> Session:
    async with open_sessions(db, settings) as sessions:
        return await action(sessions)


@session_app.command("pause", short_help="Stop a running session's clock.")
def session_pause(
    candidate_id: CandidateArg,
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Pause a running session: its clock stands still and no ending rule fires until it is
    resumed; the candidate's page locks at its next heartbeat. Exit code 1 when it has ended
    or is paused already."""
    _control(
        candidate_id,
        as_json,
        database_url,
        lambda s: s.pause(candidate_id, actor="cli", reason=reason),
    )


@session_app.command("resume", short_help="Start a paused session's clock again.")
def session_resume(
    candidate_id: CandidateArg,
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Resume a paused session: its deadline has moved by the paused time. Exit code 1 when it
    is not paused."""
    _control(
        candidate_id,
        as_json,
        database_url,
        lambda s: s.resume(candidate_id, actor="cli", reason=reason),
    )


@session_app.command("reopen", short_help="Open an ended session again with N minutes.")
def session_reopen(
    candidate_id: CandidateArg,
    minutes: Annotated[
        int,
        typer.Option(
            "--minutes",
            min=1,
            max=MAX_REOPEN_MINUTES,
            help="Time left, counted from when the candidate's page is next heard from.",
        ),
    ],
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Reopen an ended session (completed or abandoned): its clock starts when the candidate's
    page is next heard from; the earlier ending stays in the timeline. Exit code 1 when it is
    still running."""
    _control(
        candidate_id,
        as_json,
        database_url,
        lambda s: s.reopen(candidate_id, minutes, actor="cli", reason=reason),
    )


@session_app.command("extend", short_help="Give a running session extra minutes.")
def session_extend(
    candidate_id: CandidateArg,
    minutes: Annotated[
        int,
        typer.Option("--minutes", min=1, max=MAX_EXTENSION_MINUTES, help="Minutes to add."),
    ],
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Extend a running session; the deadline moves at once for everybody. Exit code 1 when it
    has ended."""
    _control(
        candidate_id,
        as_json,
        database_url,
        lambda s: s.extend(candidate_id, minutes, actor="cli", reason=reason),
    )


@session_app.command("incident", short_help="Record an incident (an irregularity) on a session.")
def session_incident(
    candidate_id: Annotated[str, typer.Argument(help="The candidate whose session it is.")],
    severity: Annotated[
        Severity, typer.Option("--severity", help="How serious it is.", case_sensitive=False)
    ],
    reason_code: Annotated[
        str, typer.Option("--reason-code", help="What happened, as a name (e.g. second_person).")
    ],
    note: Annotated[str, typer.Option("--note", help="Free text for the timeline.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the incident as JSON.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Record an incident on a running or ended session: it goes in the timeline (actor
    `cli`), flags the session on the dashboard and in the report, and sends session.flagged.

    Exit code 1 when the candidate has no session or the input is refused.
    """
    settings = Settings()
    db = database(database_url, settings)
    migrate_embedded(db)
    try:
        incident = asyncio.run(_incident(db, settings, candidate_id, severity, reason_code, note))
    except SessionNotFound:
        raise CommandFailed(f"no test session for candidate {candidate_id!r}") from None
    if as_json:
        payload = {**dataclasses.asdict(incident), "at": incident.at.isoformat()}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    out.print(
        f"incident {incident.id} on {candidate_id}: {incident.severity} {incident.reason_code}",
        highlight=False,
    )


async def _incident(
    db: Database, settings: Settings, candidate_id: str, severity: Severity, code: str, note: str
) -> Incident:
    async with open_sessions(db, settings) as sessions:
        return await sessions.record_incident(candidate_id, severity, code, note, actor="cli")


async def _erase(db: Database, settings: Settings, candidate_id: str) -> Erasure:
    async with open_sessions(db, settings) as sessions:
        return await sessions.erase(candidate_id, actor="cli")


async def _load(db: Database, settings: Settings, candidate_id: str) -> tuple[Session, list[Event]]:
    async with open_sessions(db, settings) as sessions:
        session = await sessions.read(candidate_id)
        return session, await sessions.timeline(candidate_id)


def without_answer_contents(value: Any) -> Any:
    """`value` with every `pending_answers` object replaced by its keys (`answer_keys`): an
    `adopted` event keeps the whole original row, answers included, and none may be shown."""
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if key == "pending_answers" and isinstance(item, dict):
                cleaned["answer_keys"] = sorted(item)
            elif key == "answer_seq":
                continue  # keys again, and nothing a reader needs
            else:
                cleaned[key] = without_answer_contents(item)
        return cleaned
    if isinstance(value, list):
        return [without_answer_contents(item) for item in value]
    return value


def session_summary(session: Session) -> dict[str, Any]:
    """What `session show --json` prints about the session itself: the session as the API
    shows it (views.py), with when a tab closed and which questions have an answer, never
    the answers."""
    shown = views.SessionOut(**views.session_fields(session, answers=False))
    return {
        **shown.model_dump(mode="json"),
        "tab_closed_at": _iso(session.tab_closed_at),
        "answer_keys": sorted(session.pending_answers),
    }


def event_summary(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "at": _iso(event.at),
        "actor": event.actor,
        "detail": without_answer_contents(event.detail),
    }


def _duration(seconds: int) -> str:
    hours, rest = divmod(max(0, seconds), 3600)
    mins, secs = divmod(rest, 60)
    return f"{hours}h {mins:02d}m {secs:02d}s" if hours else f"{mins}m {secs:02d}s"


def _session_table(s: Session) -> Table:
    table = Table(title=Text(f"test session {s.candidate_id}"), show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    extra = f" (+{s.extra_minutes} extended)" if s.extra_minutes else ""
    answers = sorted(s.pending_answers)
    planned = (
        f" (planned: {', '.join(s.planned_sections)})" if s.planned_sections is not None else ""
    )
    rows: list[tuple[str, str | None]] = [
        ("status", s.status.value),
        ("method", s.completion_method.value if s.completion_method else "-"),
        ("started", _shown(s.test_start_time)),
        ("duration", f"{s.test_duration_minutes} min{extra}{_accommodated(s)}"),
        ("deadline", _shown(s.current_deadline)),
        ("remaining", _duration(s.remaining_seconds)),
        ("paused", _paused(s)),
        ("policy", _policy(s)),
        (
            "reopened",
            f"{s.reopen_count} time(s), last {_shown(s.reopened_at)}" if s.reopen_count else "-",
        ),
        ("last heartbeat", _shown(s.last_heartbeat) or "never"),
        ("last activity", _shown(s.last_activity) or "never"),
        ("tab closed at", _shown(s.tab_closed_at) or "-"),
        ("completed at", _shown(s.completed_at) or "-"),
        ("sections", f"{', '.join(s.sections_completed) or 'none'}{planned}"),
        ("answers", f"{len(answers)}: {', '.join(answers)}" if answers else "none"),
        ("server time", _shown(s.server_now)),
    ]
    for name, value in rows:
        table.add_row(name, Text(value or "-"))
    return table


def _accommodated(s: Session) -> str:
    a = s.accommodations
    if a.time_multiplier == 1 and not a.extra_minutes:
        return ""
    return f" (accommodations: x{a.time_multiplier:g} +{a.extra_minutes} min)"


def _paused(s: Session) -> str:
    stood = f"{s.paused_seconds:.0f} s before" if s.paused_seconds else ""
    if s.awaiting_candidate:
        return f"waiting for the candidate's page since {_shown(s.paused_at)}"
    if s.paused_at is not None:
        return f"since {_shown(s.paused_at)}" + (f" ({stood})" if stood else "")
    return stood or "no"


def _policy(s: Session) -> str:
    p = s.policy
    shown = {
        "abandon after": f"{p.abandon_after_seconds:g} s" if p.abandon_after_seconds else None,
        "tab close": p.tab_close.value if p.tab_close else None,
        "at deadline": p.at_deadline.value if p.at_deadline else None,
        "grace": f"{p.grace_seconds:g} s" if p.grace_seconds is not None else None,
    }
    given = [f"{k}: {v}" for k, v in shown.items() if v is not None]
    return ", ".join(given) if given else "the settings'"


def _timeline_table(candidate_id: str, events: list[Event]) -> Table:
    # A time cut in two is unreadable, and at 80 columns rich would cut it: the times and the
    # event types never wrap, the detail takes what is left.
    table = Table(
        title=Text(f"timeline {candidate_id}"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("at", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("actor", overflow="fold")
    table.add_column("detail", overflow="fold", ratio=1)
    for e in events:
        detail = json.dumps(without_answer_contents(e.detail), sort_keys=True, default=str)
        table.add_row(
            str(e.id), Text(_shown(e.at) or ""), Text(e.type), Text(e.actor), Text(detail)
        )
    return table
