"""Options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

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
