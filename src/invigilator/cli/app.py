"""The typer application every `invigilator …` command hangs on, and what they share: the
database announcement, logging configured from the settings, and the one error boundary.

The boundary (`_Boundary.invoke`) is the only place where an error becomes `error: …` and exit
code 1: commands raise (`CommandFailed` for their own messages, or whatever the store, the
migrations or psycopg raise) and never print an error themselves. It prints one line, with no
password in it, and leaves tracebacks to what is a bug.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
import pydantic
import typer
from psycopg_pool import PoolTimeout
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from invigilator import __version__
from invigilator.config import Settings
from invigilator.db.selection import Database, choose_database
from invigilator.db.url import scrub
from invigilator.domain import InvigilatorError
from invigilator.logs import configure_logging, redact

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: Click's own help layout: it wraps to the terminal (80 columns at most) and never cuts an
#: option name or a word, where typer's rich panels squeeze the help into a narrow column and
#: cut what does not fit.
HELP_LAYOUT: dict[str, Any] = {"rich_markup_mode": None, "no_args_is_help": True}


class CommandFailed(InvigilatorError):
    """A command cannot do what it was asked; its message is what the user reads."""

    code = "command_failed"


#: The database the running command announced (its password is scrubbed from any error).
_chosen: Database | None = None


def database(database_url: str | None, settings: Settings | None = None) -> Database:
    """The database this command uses, announced on stderr with the password masked."""
    global _chosen
    _chosen = choose_database(settings or Settings(), database_url)
    err.print(f"[dim]database: {_chosen.label}[/dim]", highlight=False)
    return _chosen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _setting_name(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "settings"
    return "DATABASE_URL" if name == "database_url" else f"INVIGILATOR_{name.upper()}"


def explain(exc: BaseException) -> str | None:
    """The one line an error becomes, or None for an error that is a bug (a traceback)."""
    if isinstance(exc, InvigilatorError):
        return exc.message
    if isinstance(exc, pydantic.ValidationError):  # the settings: never echo the value given
        problems = (f"{_setting_name(e['loc'])}: {e['msg']}" for e in exc.errors())
        return "invalid setting: " + "; ".join(problems)
    if isinstance(exc, PoolTimeout):
        return f"could not connect to the database: {_first_line(exc)}"
    if isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate is None or exc.sqlstate[:2] in ("08", "28")  # connection, authorization
    ):
        return f"could not connect to the database: {_first_line(exc)}"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"{_first_line(exc)}: the schema is missing; run `invigilator db upgrade` first"
    if isinstance(exc, psycopg.Error):
        return _first_line(exc)
    return None


class _Boundary(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # usage errors: click says it
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            text = redact(scrub(message, _chosen.url if _chosen else None))
            err.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False)
            raise typer.Exit(code=1) from None


app = typer.Typer(
    cls=_Boundary,
    help="Invigilator: keeps online test sessions honest.",
    # A traceback's locals may hold a database URL with its password.
    pretty_exceptions_show_locals=False,
    **HELP_LAYOUT,
)


def _show_version(value: bool) -> None:
    if value:
        out.print(f"invigilator {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _every_command(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Here, not in `serve`: INVIGILATOR_LOG_FORMAT and _LEVEL hold for `sweep` and the rest too.
    configure_logging(Settings())
