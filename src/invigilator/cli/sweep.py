"""`invigilator sweep`: end every session that is due, once or in a loop until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from rich.text import Text

from invigilator.cli.app import CommandFailed, app, database, err, out
from invigilator.cli.connect import migrate_embedded, open_sessions
from invigilator.cli.options import DatabaseUrl
from invigilator.config import Settings
from invigilator.db.selection import Database
from invigilator.domain import Ended
from invigilator.sweeper import ROLLUP_PER_PASS, Sweeper, count_by_method, describe, sweep_once


@app.command("sweep", short_help="End every session that is due, exactly once.")
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
    migrate_embedded(db)
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
    except asyncio.CancelledError:
        raise CommandFailed("stopped at once; the batch in flight was rolled back") from None


async def _sweep(
    db: Database, settings: Settings, *, once: bool, interval: float, batch_size: int
) -> None:
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        async with open_sessions(db, settings) as sessions:
            if once:
                ended = await sweep_once(
                    sessions, batch_size=batch_size, stop=stop, on_batch=_print
                )
                total = f"finalized {len(ended)} session(s)"
                counts = count_by_method(ended)
                out.print(f"{total}: {describe(counts)}" if ended else total, highlight=False)
                if stop.is_set():
                    err.print("stopped by a signal: the pass may be incomplete")
                else:  # a pass's share of the report's rollup, as the running sweeper's
                    rolled = await sessions.roll_up(ROLLUP_PER_PASS)
                    if rolled.buckets:
                        err.print(
                            f"rolled up {rolled.buckets} quarter hour(s) of ended sessions "
                            "for the report",
                            highlight=False,
                        )
            else:
                await Sweeper(
                    sessions,
                    interval=interval,
                    batch_size=batch_size,
                    retention=settings.retention(),
                ).run(stop)


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
