"""The `invigilator` command line (typer). Each module adds its commands to `app`."""

from __future__ import annotations

from invigilator.cli import db, demo, report, serve, sweep  # noqa: F401  (registers commands)
from invigilator.cli.app import app


def main() -> None:
    app()
