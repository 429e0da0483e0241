"""The suite's forked commands (tests/support/forkserver.py) behave as `python -m invigilator`
does: the same exit codes, output and environment."""

from __future__ import annotations

import subprocess

import pytest

from support.cli import cli_args, cli_env, run_cli
from support.forkserver import fork_server


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["no-such-command"],
        ["db", "check", "--database-url", "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"],
        ["session", "show", "a/b", "--database-url", "postgresql://127.0.0.1:1/x"],
    ],
)
def test_a_forked_command_answers_as_a_fresh_interpreter_does(args: list[str]) -> None:
    forked = fork_server(cli_env()).run(args, cli_env(), timeout=60)
    fresh = subprocess.run(
        cli_args(*args), capture_output=True, text=True, env=cli_env(), timeout=60, check=False
    )
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )


def test_a_forked_command_sees_its_own_environment(db_url: str) -> None:
    shown = run_cli("db", "check", env={"DATABASE_URL": db_url})
    assert shown.returncode == 0, shown.stderr
    other = run_cli("db", "check", env={"DATABASE_URL": "postgresql://127.0.0.1:1/x"})
    assert other.returncode == 1 and "could not connect" in other.stderr
