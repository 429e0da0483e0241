"""`invigilator demo-data`: fill a database with synthetic sessions (invigilator.demo_data)."""

from __future__ import annotations

import time
from typing import Annotated

import psycopg
import typer

from invigilator.cli.app import CommandFailed, app, database, err, out
from invigilator.cli.options import DatabaseUrl
from invigilator.config import Settings
from invigilator.demo_data import load_demo_data


@app.command("demo-data", short_help="Fill the database with realistic synthetic sessions.")
def demo_data(
    candidates: Annotated[
        int, typer.Option("--candidates", help="How many candidates (one session each).", min=1)
    ],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random generator.")] = 1,
    days: Annotated[
        int, typer.Option("--days", help="Spread the sessions over this many past days.", min=1)
    ] = 30,
    database_url: DatabaseUrl = None,
) -> None:
    """Fill the database with realistic synthetic candidates, sessions and events
    (distributions in docs/analytics.md); about 2 % of them are running right now."""
    settings = Settings()
    db = database(database_url, settings)
    started = time.perf_counter()
    with psycopg.connect(
        db.url, connect_timeout=max(1, round(settings.db_connect_timeout_seconds))
    ):
        pass  # an unreachable database is one line, not an empty progress bar and then a line
    # Imported here: rich.progress (its spinners) is 7 % of every other command's start.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("[bold]demo data[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )
    task = progress.add_task("candidates", total=candidates)
    try:
        with progress:
            totals = load_demo_data(
                db.url,
                candidates,
                seed=seed,
                days=days,
                policy=settings.policy(),
                on_progress=lambda n: progress.advance(task, n),
            )
    except psycopg.Error as exc:
        # Citus relays a worker's refusal of a COPY with its message, not always its SQLSTATE.
        if not (
            isinstance(exc, psycopg.errors.UniqueViolation)
            or "duplicate key value violates unique constraint" in str(exc)
        ):
            raise
        raise CommandFailed(
            f"demo data for seed {seed} is already in this database: pick another --seed"
        ) from None
    elapsed = time.perf_counter() - started
    out.print(
        f"demo data: {totals.candidates:,} candidates, {totals.sessions:,} sessions "
        f"({totals.active:,} running now), {totals.events:,} events in {elapsed:.1f} s"
    )
