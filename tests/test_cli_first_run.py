"""What a new user meets first: `--version`, help that reads at 80 columns, and one clear line
(exit code 1, no password) from every command when the database does not answer."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import typer
from typer.testing import CliRunner

from invigilator import __version__
from invigilator.cli import app
from support.cli import run_cli
from support.ports import free_port

PASSWORD = "Pw-" + uuid.uuid4().hex  # made at run time: never in the repository


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"invigilator {__version__}\n"


CONNECTING = {
    "serve": ["serve", "--port", "0"],
    "demo": ["demo", "--port", "0"],
    "sweep": ["sweep", "--once"],
    "session show": ["session", "show", "cand-1"],
    "report": ["report"],
    "demo-data": ["demo-data", "--candidates", "1"],
    "db upgrade": ["db", "upgrade"],
    "db verify": ["db", "verify"],
    "db check": ["db", "check"],
}


def test_every_command_says_in_one_line_that_the_database_does_not_answer() -> None:
    port = free_port()  # nothing listens there: connections to it are refused at once
    env = {"DATABASE_URL": f"postgresql://exams:{PASSWORD}@127.0.0.1:{port}/exams"}
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = {name: pool.submit(run_cli, *args, env=env) for name, args in CONNECTING.items()}
    for name, run in runs.items():
        result = run.result()
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert PASSWORD not in result.stdout + result.stderr, name
        assert result.stdout == "", name
        announced, error = result.stderr.splitlines()  # which database, then why: no more
        assert (
            announced == f"database: PostgreSQL at postgresql://exams:****@127.0.0.1:{port}/exams"
        )
        assert error.startswith("error: could not connect to the database: "), (name, error)
        assert "Connection refused" in error, (name, error)


def _commands(group: typer.Typer, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for info in group.registered_commands:
        found.append((*path, info.name or (info.callback.__name__ if info.callback else "")))
    for sub in group.registered_groups:
        assert sub.typer_instance is not None and sub.name is not None
        found.extend(_commands(sub.typer_instance, (*path, sub.name)))
    return found


@pytest.mark.parametrize("command", _commands(app), ids=lambda c: " ".join(c) or "invigilator")
def test_help_reads_at_80_columns(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(
        app, [*command, "--help"], env={"COLUMNS": "80"}, prog_name="invigilator"
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    cut = [line for line in lines if "…" in line or (line.endswith("...") and "[ARGS]" not in line)]
    assert cut == [], result.output
