"""`invigilator session show`: one candidate's session and its timeline, as tables or JSON.
Answer contents are never printed: only which questions have an answer.
`invigilator session erase`: the right to erasure, as the staff API's DELETE does it."""

from __future__ import annotations

import asyncio
import json
import sys
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
from invigilator.domain import Event, Session, SessionNotFound
from invigilator.privacy import Erasure
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
        ("duration", f"{s.test_duration_minutes} min{extra}"),
        ("deadline", _shown(s.deadline)),
        ("remaining", _duration(s.remaining_seconds)),
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
