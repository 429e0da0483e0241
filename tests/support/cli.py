"""Running `python -m invigilator` as a user would: a real process, a clean environment (no
ambient `INVIGILATOR_*` or `DATABASE_URL`: only what the test gives), wide plain output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

from support.forkserver import fork_server


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a command: default settings, wide tables without colour, patient
    statements (a sweeper held at a barrier must not time out), then `env` on top."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INVIGILATOR_") and k not in ("DATABASE_URL", "COLUMNS")
    }
    clean.update(COLUMNS="250", INVIGILATOR_STATEMENT_TIMEOUT_MS="60000", NO_COLOR="1")
    clean.update(env or {})
    return clean


def cli_args(*args: str, db_url: str | None = None) -> list[str]:
    """`python -m invigilator ARGS`, with `--database-url` last when a database is given."""
    tail = ["--database-url", db_url] if db_url is not None else []
    return [sys.executable, "-m", "invigilator", *args, *tail]


def run_cli(
    *args: str, db_url: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; its exit code, stdout and stderr are the caller's to check.

    The process is forked from this test process's fork server (support/forkserver.py), which
    imported invigilator once, when the environment differs from the base only in settings
    read as a command runs; otherwise (a narrow COLUMNS, say) it is a fresh interpreter."""
    base, full = cli_env(), cli_env(env)
    if all(_read_at_run_time(k) for k in set(base.items()) ^ set(full.items())):
        tail = ["--database-url", db_url] if db_url is not None else []
        return fork_server(base).run([*args, *tail], full, timeout)
    return subprocess.run(
        cli_args(*args, db_url=db_url),
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )


def _read_at_run_time(item: tuple[str, str]) -> bool:
    """Settings are read when a command runs; what else a library reads at import (rich's
    COLUMNS and NO_COLOR, for one) needs a fresh interpreter to take effect."""
    return item[0] == "DATABASE_URL" or item[0].startswith("INVIGILATOR_")


def start_cli(
    *args: str, db_url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start a command in the background, its stdout and stderr piped."""
    return subprocess.Popen(
        cli_args(*args, db_url=db_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )


def stop_process(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[str, str]:
    """SIGTERM (as an operator stops a service), then its output; SIGKILL if it will not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


class Lines:
    """A stream's lines, collected on a thread so a test can wait for one with a bound."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._cond:
            if not self._cond.wait_for(found, timeout):
                raise AssertionError(f"no line with {text!r} in {self.lines}")
            return found() or ""

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)
