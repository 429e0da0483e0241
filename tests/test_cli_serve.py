"""`invigilator serve` as an operator runs it: on the embedded database, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _embedded_servers(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(data_dir / "pgdata") in cmdline:
            found.append(proc)
    return found


def test_sigterm_stops_serve_and_its_embedded_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    env = {
        **os.environ,
        "INVIGILATOR_DATA_DIR": str(data_dir),
        "INVIGILATOR_SECRET_KEY": "serve-test-secret-0123456789abcdef0123",
        "INVIGILATOR_ADMIN_KEYS": "serve-test-staff-key-0123456789",
    }
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invigilator", "serve", "--port", str(port), "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    for _ in range(50):  # the postmaster may need a moment to exit after pg_ctl stop
        if not _embedded_servers(data_dir):
            break
        time.sleep(0.1)
    assert _embedded_servers(data_dir) == []
