"""`invigilator sweep` (end what is due) and `invigilator session show` (one session, its
timeline). Answer contents are never printed: only which questions have an answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Annotated, Any

import psycopg
import typer
from rich.table import Table
from rich.text import Text

from invigilator.cli.app import app, database, err, fail, out
from invigilator.cli.options import DatabaseUrl
from invigilator.config import Settings
from invigilator.db import connector, migrate
from invigilator.db.selection import Database
from invigilator.domain import (
    DatabaseUnavailable,
    Ended,
    Event,
    InvigilatorError,
    Session,
    SessionNotFound,
)
from invigilator.service import Sessions
from invigilator.store import SessionStore
from invigilator.sweeper import (
    Sweeper,
    count_by_method,
    describe,
    sweep_once,
)

session_app = typer.Typer(help="Look at one candidate's test session.", no_args_is_help=True)
app.add_typer(session_app, name="session")


# --- shared -------------------------------------------------------------------------------


def _prepare(db: Database) -> None:
    """The embedded database gets its schema on first use (as `db upgrade` would give it);
    any other database is left as it is: a missing schema is reported, not created."""
    if not db.embedded:
        return
    try:
        migrate.upgrade(db.url, create_candidate_table=True)
    except InvigilatorError as exc:
        raise fail(exc.message, db) from None
    except psycopg.Error as exc:
        raise fail(str(exc), db) from None


@contextlib.asynccontextmanager
async def _open_store(db: Database, settings: Settings) -> AsyncIterator[Sessions]:
    # One connection is all a sweeper or a lookup uses at a time.
    pool = connector.pool_for(db.url, settings, min_size=1, max_size=1)
    try:
        try:
            # One plain connection first: its error says why (the pool's only says "timeout").
            probe = await psycopg.AsyncConnection.connect(
                db.url, connect_timeout=max(1, round(settings.db_connect_timeout_seconds))
            )
            await probe.close()
            await pool.open(wait=True, timeout=settings.db_connect_timeout_seconds)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
            raise DatabaseUnavailable(f"could not connect to the database: {reason}") from None
        yield Sessions(SessionStore(pool, settings.policy()), settings.limits())
    finally:
        await pool.close()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _shown(value: datetime | None) -> str | None:
    """A time for people: to the second."""
    return value.isoformat(timespec="seconds") if value is not None else None


# --- invigilator sweep ----------------------------------------------------------------------


@app.command("sweep")
def sweep(
    once: Annotated[
        bool, typer.Option("--once", help="One pass: print what it finalized, then exit.")
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            min=0.01,
            help="Seconds between passes when looping "
            "(default: $INVIGILATOR_SWEEP_INTERVAL_SECONDS, else 5).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="At most this many sessions per transaction "
            "(default: $INVIGILATOR_SWEEP_BATCH_SIZE, else 500).",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """End every session that is due (deadline, silence, tab closed), exactly once.

    Safe to run many at once, each batch is one transaction.

    Loops until SIGTERM or SIGINT, then exits 0 once the batch in flight is committed.

    A second signal stops at once (that batch is rolled back).
    """
    settings = Settings()
    db = database(database_url, settings)
    _prepare(db)
    logging.basicConfig(
        level=logging.WARNING if once else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(
            _sweep(
                db,
                settings,
                once=once,
                interval=interval or settings.sweep_interval_seconds,
                batch_size=batch_size or settings.sweep_batch_size,
            )
        )
    except InvigilatorError as exc:
        raise fail(exc.message, db) from None
    except asyncio.CancelledError:
        raise fail("stopped at once; the batch in flight was rolled back", db) from None


async def _sweep(
    db: Database, settings: Settings, *, once: bool, interval: float, batch_size: int
) -> None:
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        async with _open_store(db, settings) as store:
            if once:
                ended = await sweep_once(store, batch_size=batch_size, stop=stop, on_batch=_print)
                total = f"finalized {len(ended)} session(s)"
                counts = count_by_method(ended)
                out.print(f"{total}: {describe(counts)}" if ended else total, highlight=False)
                if stop.is_set():
                    err.print("stopped by a signal: the pass may be incomplete")
            else:
                await Sweeper(store, interval=interval, batch_size=batch_size).run(stop)


def _print(batch: list[Ended]) -> None:
    """One line per finalized session, printed (and flushed) as soon as its batch commits."""
    lines = (
        f"{e.candidate_id}  {e.status.value}/{e.completion_method.value}  "
        f"{e.completed_at.isoformat()}"
        for e in batch
    )
    out.print(Text("\n".join(lines)), highlight=False)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` (finish the batch in flight, then exit); a second one cancels
    the running task (its open transaction is rolled back by PostgreSQL)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = (signal.SIGTERM, signal.SIGINT)

    def handler(sig: signal.Signals) -> Callable[[], None]:
        def on_signal() -> None:
            if stop.is_set():
                if task is not None:
                    task.cancel()
                return
            err.print(f"{sig.name}: finishing the current batch, then stopping", highlight=False)
            stop.set()

        return on_signal

    installed = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(sig, handler(sig))
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# --- invigilator session show ---------------------------------------------------------------


@session_app.command("show")
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
    _prepare(db)
    try:
        session, events = asyncio.run(_load(db, settings, candidate_id))
    except SessionNotFound:
        raise fail(f"no test session for candidate {candidate_id!r}", db) from None
    except InvigilatorError as exc:
        raise fail(exc.message, db) from None
    if as_json:
        payload = {**session_summary(session), "events": [event_summary(e) for e in events]}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return
    out.print(_session_table(session))
    out.print(_timeline_table(session.candidate_id, events))


async def _load(db: Database, settings: Settings, candidate_id: str) -> tuple[Session, list[Event]]:
    async with _open_store(db, settings) as store:
        session = await store.read(candidate_id)
        return session, await store.timeline(candidate_id)


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
    """What `session show --json` prints about the session itself (no answer contents)."""
    return {
        "candidate_id": session.candidate_id,
        "status": session.status.value,
        "completion_method": session.completion_method.value if session.completion_method else None,
        "test_start_time": _iso(session.test_start_time),
        "test_duration_minutes": session.test_duration_minutes,
        "extra_minutes": session.extra_minutes,
        "deadline": _iso(session.deadline),
        "remaining_seconds": session.remaining_seconds,
        "last_heartbeat": _iso(session.last_heartbeat),
        "last_activity": _iso(session.last_activity),
        "tab_closed_at": _iso(session.tab_closed_at),
        "completed_at": _iso(session.completed_at),
        "sections_completed": session.sections_completed,
        "planned_sections": session.planned_sections,
        "answer_keys": sorted(session.pending_answers),
        "server_now": _iso(session.server_now),
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
    table.add_column("field", style="bold")
    table.add_column("value")
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
    table = Table("#", "at", "event", "actor", "detail", title=Text(f"timeline {candidate_id}"))
    for e in events:
        detail = json.dumps(without_answer_contents(e.detail), sort_keys=True, default=str)
        table.add_row(
            str(e.id), Text(_shown(e.at) or ""), Text(e.type), Text(e.actor), Text(detail)
        )
    return table
