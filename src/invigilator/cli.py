"""The `invigilator` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from invigilator.config import Settings
from invigilator.db import check as db_check
from invigilator.db import migrate, verify
from invigilator.db.selection import Database, choose_database
from invigilator.db.url import scrub
from invigilator.domain import InvigilatorError

app = typer.Typer(help="Invigilator: keeps online test sessions honest.", no_args_is_help=True)
db_app = typer.Typer(help="Create, upgrade, verify and check the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL; defaults to $DATABASE_URL, else the embedded database.",
        show_default=False,
    ),
]
CreateCandidate = Annotated[
    bool,
    typer.Option(
        "--create-candidate-table",
        help="Create a minimal candidate table when the database has none.",
    ),
]


def _database(database_url: str | None) -> Database:
    database = choose_database(Settings(), database_url)
    err.print(f"[dim]database: {database.label}[/dim]")
    return database


def _fail(message: str, database: Database | None = None) -> typer.Exit:
    text = scrub(message, database.url if database else None)
    err.print(f"[bold red]error:[/bold red] {text}", highlight=False)
    return typer.Exit(code=1)


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseUrl = None, create_candidate_table: CreateCandidate = False
) -> None:
    """Apply pending schema migrations (idempotent; safe from many processes at once)."""
    database = _database(database_url)
    try:
        applied = migrate.upgrade(
            database.url,
            create_candidate_table=create_candidate_table or database.embedded,
            echo=lambda line: out.print(line),
        )
    except InvigilatorError as exc:
        raise _fail(exc.message, database) from None
    except psycopg.Error as exc:
        raise _fail(str(exc), database) from None
    out.print(f"schema up to date ({len(applied)} migration(s) applied now)")


@db_app.command("verify")
def db_verify(database_url: DatabaseUrl = None) -> None:
    """Run the setup guide's verification checks; exit 1 on any mismatch."""
    database = _database(database_url)
    try:
        with psycopg.connect(database.url, autocommit=True) as conn:
            checks = verify.verify(conn)
    except psycopg.Error as exc:
        raise _fail(str(exc), database) from None
    table = Table("check", "result", "detail", title="test_session verification")
    for c in checks:
        table.add_row(c.name, "[green]pass[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
    out.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        out.print(f"[red]{len(failed)} check(s) failed[/red]; run `invigilator db upgrade`")
        raise typer.Exit(code=1)
    out.print(f"[green]all {len(checks)} checks passed[/green]")


@db_app.command("check")
def db_check_command(database_url: DatabaseUrl = None) -> None:
    """Check connection, server version, privileges and the candidate table, with fixes."""
    database = _database(database_url)
    findings = db_check.check(database.url)
    table = Table("check", "result", "detail", "fix", title="database check")
    for f in findings:
        table.add_row(
            f.name, "[green]ok[/green]" if f.ok else "[red]problem[/red]", f.detail, f.fix
        )
    out.print(table)
    if not all(f.ok for f in findings):
        raise typer.Exit(code=1)


@db_app.command("sql")
def db_sql(create_candidate_table: CreateCandidate = False) -> None:
    """Print the complete schema SQL (no connection needed), for psql users."""
    sys.stdout.write(migrate.schema_sql(create_candidate_table=create_candidate_table))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _json_default(value: object) -> str:
    return str(value)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, default=_json_default, indent=2) + "\n")


def main() -> None:
    app()
