"""The typer application every `invigilator …` command hangs on, and what they share."""

from __future__ import annotations

import typer
from rich.console import Console

from invigilator.config import Settings
from invigilator.db.selection import Database, choose_database
from invigilator.db.url import scrub

app = typer.Typer(help="Invigilator: keeps online test sessions honest.", no_args_is_help=True)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def database(database_url: str | None, settings: Settings | None = None) -> Database:
    """The database this command uses, announced on stderr with the password masked."""
    chosen = choose_database(settings or Settings(), database_url)
    err.print(f"[dim]database: {chosen.label}[/dim]", highlight=False)
    return chosen


def fail(message: str, db: Database | None = None) -> typer.Exit:
    """Print an error (never a password) and return the Exit to raise."""
    text = scrub(message, db.url if db else None)
    err.print(f"[bold red]error:[/bold red] {text}", highlight=False)
    return typer.Exit(code=1)
