"""`invigilator serve` as an operator runs it: on the embedded database, stopped by SIGTERM;
refusing a busy port before it prints anything; never hanging on a part that fails to start,
and never deaf to SIGTERM while a part is still starting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from sweeptools import Lines, wait_until

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    subprocess.run(
        [sys.executable, "-m", "invigilator", "db", "upgrade"],
        env=_env(made),
        capture_output=True,
        timeout=120,
        check=True,
    )
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVIGILATOR_")}
    env.pop("DATABASE_URL", None)
    return {**env, **SERVE_ENV, "INVIGILATOR_DATA_DIR": str(data_dir), **extra}


def _serve(
    data_dir: Path, port: int, *options: str, patch: str | None = None, **env: str
) -> subprocess.Popen[str]:
    start = [sys.executable, "-c", PATCHED_SERVE.format(body=patch)] if patch else None
    command = start or [sys.executable, "-m", "invigilator"]
    return subprocess.Popen(
        [*command, "serve", "--port", str(port), "--no-demo", *options],
        env=_env(data_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stopped_database(data_dir: Path) -> None:
    # the postmaster may need a moment to exit after pg_ctl stop
    wait_until(lambda: not _embedded_servers(data_dir), "the embedded PostgreSQL to stop", 10)


def test_sigterm_stops_serve_and_its_embedded_database(data_dir: Path) -> None:
    port = _free_port()
    proc = _serve(data_dir, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
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
    result = subprocess.run(
        [sys.executable, "-m", "invigilator", "serve", "--port", str(listening)],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
        data_dir, _free_port(), "--workers", str(workers), INVIGILATOR_METRICS_PORT=str(listening)
    )
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
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
    proc = _serve(data_dir, _free_port(), patch=RAISES)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "sweeper started" in err and "sweeper stopped" in err
    assert "RuntimeError: the webhook worker cannot start: injected" in err
    printed = [line for line in err.splitlines() if not line.startswith("{")]  # not a log line
    assert printed[-1] == (
        "error: the service did not start: RuntimeError: the webhook worker cannot start: injected"
    ), err
    _stopped_database(data_dir)


def test_sigterm_stops_serve_while_a_part_is_still_starting(data_dir: Path) -> None:
    proc = _serve(data_dir, _free_port(), patch=NEVER_RETURNS)
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
