"""`invigilator serve` as an operator runs it: on the embedded database, stopped by SIGTERM;
refusing a busy port before it prints anything; never hanging on a part that fails to start,
and never deaf to SIGTERM while a part is still starting."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.cli import Lines, cli_args, cli_env, run_cli
from support.ports import free_port
from support.waiting import wait_for_http, wait_until

SERVE_ENV = {
    "INVIGILATOR_SECRET_KEY": "serve-test-secret-0123456789abcdef0123",
    "INVIGILATOR_ADMIN_KEYS": "serve-test-staff-key-0123456789",
}

#: `invigilator serve` with one part of the app replaced before it runs: the webhook worker's
#: start (api/app.py awaits it inside the lifespan, after the sweeper has started).
PATCHED_SERVE = """
import asyncio, sys
from invigilator.cli import main
from invigilator.webhooks import worker

async def start(settings, pool, stop):
    print("webhook worker: starting", file=sys.stderr, flush=True)
    {body}

worker.start = start
sys.argv = ["invigilator", *sys.argv[1:]]
main()
"""
RAISES = 'raise RuntimeError("the webhook worker cannot start: injected")'
NEVER_RETURNS = "await asyncio.Event().wait()"


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded database for these tests, made (initdb, migrations) once: a fresh one per
    test costs an initdb each, and a loaded machine can make a start miss pgserver's bound."""
    made = tmp_path_factory.mktemp("serve") / "data"
    upgraded = run_cli("db", "upgrade", env=_env(made))
    assert upgraded.returncode == 0, upgraded.stderr
    _stopped_database(made)
    return made


def _embedded_servers(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(data_dir / "pgdata") in cmdline:
            found.append(proc)
    return found


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    """No database named: serve runs on the embedded one in `data_dir`."""
    return {**SERVE_ENV, "INVIGILATOR_DATA_DIR": str(data_dir), **extra}


def _serve(
    data_dir: Path, port: int, *options: str, patch: str | None = None, **env: str
) -> subprocess.Popen[str]:
    args = ["serve", "--port", str(port), "--no-demo", *options]
    command = [sys.executable, "-c", PATCHED_SERVE.format(body=patch), *args] if patch else None
    return subprocess.Popen(
        command or cli_args(*args),
        env=cli_env(_env(data_dir, **env)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stopped_database(data_dir: Path) -> None:
    # the postmaster may need a moment to exit after pg_ctl stop
    wait_until(
        lambda: not _embedded_servers(data_dir), "the embedded PostgreSQL to stop", within=10
    )


def _exit_of(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """Its output once it has exited by itself (killed if it has not within `timeout`)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_serve_and_its_embedded_database(data_dir: Path) -> None:
    port = free_port()
    proc = _serve(data_dir, port)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", proc, within=60)
        assert _embedded_servers(data_dir), "serve should run on its embedded PostgreSQL"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Invigilator on http://127.0.0.1" in out
    _stopped_database(data_dir)


def test_serve_refuses_a_busy_port_in_one_line_before_anything_else(
    tmp_path: Path, listening: int
) -> None:
    data_dir = tmp_path / "data"
    result = run_cli("serve", "--port", str(listening), env=_env(data_dir), timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""  # no banner, no URLs, no staff key
    assert result.stderr.splitlines() == [
        f"error: port {listening} on 127.0.0.1 is already in use: stop what listens there, "
        "or choose another with --port"
    ]
    assert not (data_dir / "pgdata").exists()  # nothing was started for it


@pytest.mark.parametrize("workers", [1, 2])
def test_a_part_that_fails_to_start_is_logged_and_serve_exits_non_zero(
    data_dir: Path, listening: int, workers: int
) -> None:
    """A real failure inside the app's start-up: the metrics listener's own port is taken."""
    proc = _serve(
        data_dir, free_port(), "--workers", str(workers), INVIGILATOR_METRICS_PORT=str(listening)
    )
    _, err = _exit_of(proc)
    assert proc.returncode == 1, err
    lines = err.splitlines()
    printed = [line for line in lines if not line.startswith("{")]  # not a log line
    # One worker: the reason in that line too; with more, each worker logs its own.
    assert printed[-1].startswith("error: the service did not start: "), err
    if workers == 1:
        assert printed[-1].endswith("address already in use"), err
    else:
        assert printed[-1].endswith("the error is logged above"), err
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    failure = next(r for r in logged if "address already in use" in r["message"])
    assert failure["level"] == "error" and str(listening) in failure["message"]
    _stopped_database(data_dir)


def test_serve_does_not_hang_when_the_webhook_worker_raises_at_start(data_dir: Path) -> None:
    """The sweeper is running by then; it must be stopped before the start-up can fail."""
    proc = _serve(data_dir, free_port(), patch=RAISES)
    _, err = _exit_of(proc)
    assert proc.returncode == 1, err
    assert "sweeper started" in err and "sweeper stopped" in err
    assert "RuntimeError: the webhook worker cannot start: injected" in err
    printed = [line for line in err.splitlines() if not line.startswith("{")]  # not a log line
    assert printed[-1] == (
        "error: the service did not start: RuntimeError: the webhook worker cannot start: injected"
    ), err
    _stopped_database(data_dir)


def test_sigterm_stops_serve_while_a_part_is_still_starting(data_dir: Path) -> None:
    proc = _serve(data_dir, free_port(), patch=NEVER_RETURNS)
    try:
        assert proc.stderr is not None
        stderr = Lines(proc.stderr)
        stderr.wait_for("webhook worker: starting", timeout=60)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert returncode == 0, stderr.text()
    assert "SIGTERM during start-up: stopping what has started" in stderr.text()
    assert "Traceback" not in stderr.text()
    _stopped_database(data_dir)
