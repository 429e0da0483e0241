"""The `invigilator` command line (typer). Each module adds its commands to `app`."""

from __future__ import annotations

from invigilator.cli import (  # noqa: F401  (registers commands)
    db,
    demo,
    demo_data,
    report,
    serve,
    session,
    sweep,
)
from invigilator.cli.app import app


def main() -> None:
    app()
