"""`invigilator db …`: create, upgrade, verify and check the database."""

from __future__ import annotations

import sys

import psycopg
import typer
from rich.table import Table

from invigilator.cli.app import HELP_LAYOUT, CommandFailed, app, database, out
from invigilator.cli.options import CreateCandidate, DatabaseUrl
from invigilator.db import check as db_check
from invigilator.db import distribute, migrate, verify

db_app = typer.Typer(help="Create, upgrade, verify and check the database.", **HELP_LAYOUT)
app.add_typer(db_app, name="db")


@db_app.command("upgrade", short_help="Apply pending schema migrations (idempotent).")
def db_upgrade(
    database_url: DatabaseUrl = None, create_candidate_table: CreateCandidate = False
) -> None:
    """Apply pending schema migrations (idempotent; safe from many processes at once)."""
    db = database(database_url)
    applied = migrate.upgrade(
        db.url,
        create_candidate_table=create_candidate_table or db.embedded,
        echo=lambda line: out.print(line),
    )
    out.print(f"schema up to date ({len(applied)} migration(s) applied now)")


@db_app.command("verify", short_help="Run the setup guide's verification checks.")
def db_verify(database_url: DatabaseUrl = None) -> None:
    """Run the setup guide's verification checks; exit 1 on any mismatch."""
    db = database(database_url)
    with psycopg.connect(db.url, autocommit=True) as conn:
        checks = verify.verify(conn)
    table = Table("check", "result", "detail", title="test_session verification")
    for c in checks:
        table.add_row(c.name, "[green]pass[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
    out.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        out.print(f"[red]{len(failed)} check(s) failed[/red]; run `invigilator db upgrade`")
        raise typer.Exit(code=1)
    out.print(f"[green]all {len(checks)} checks passed[/green]")


@db_app.command("check", short_help="Check connection, version, privileges, candidate table.")
def db_check_command(database_url: DatabaseUrl = None) -> None:
    """Check connection, server version, privileges and the candidate table, with fixes."""
    db = database(database_url)
    findings = db_check.check(db.url)
    if findings[0].name == "connection" and not findings[0].ok:  # nothing else was checked
        reason = findings[0].detail.split(": ", 1)[-1].strip().splitlines()[0]
        raise CommandFailed(f"could not connect to the database: {reason} ({findings[0].fix})")
    table = Table("check", "result", "detail", "fix", title="database check")
    for f in findings:
        table.add_row(
            f.name, "[green]ok[/green]" if f.ok else "[red]problem[/red]", f.detail, f.fix
        )
    out.print(table)
    if not all(f.ok for f in findings):
        raise typer.Exit(code=1)


@db_app.command("sql", short_help="Print the complete schema SQL (no connection needed).")
def db_sql(create_candidate_table: CreateCandidate = False) -> None:
    """Print the complete schema SQL (no connection needed), for psql users."""
    sys.stdout.write(migrate.schema_sql(create_candidate_table=create_candidate_table))


@db_app.command("distribute", short_help="Shard the tables over a Citus cluster (idempotent).")
def db_distribute(database_url: DatabaseUrl = None) -> None:
    """Distribute the tables by candidate_id over a Citus cluster, after `db upgrade`
    (idempotent; one transaction). Refused on a database without the citus extension."""
    db = database(database_url)
    placed = distribute.distribute(db.url, echo=lambda line: out.print(line))
    out.print(
        f"distributed ({len(placed)} table(s) placed now)" if placed else "already distributed"
    )
