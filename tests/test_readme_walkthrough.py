"""The README's curl walkthrough, run as written (only the port differs) against a real
`invigilator serve` on the test database: every call answers what the README says it does."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.api import SECRET, STAFF_KEY

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_up(url: str, proc: subprocess.Popen[str], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.communicate()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text("utf-8")
    section = readme[readme.index("A session from the shell") :]
    block: str = re.search(r"```bash\n(.*?)```", section, re.S)[1]  # type: ignore[index]
    return block


def test_the_readme_walkthrough_runs_as_written(db_url: str, tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("no curl")
    port = free_port()
    env = {
        **os.environ,
        "INVIGILATOR_DATA_DIR": str(tmp_path),
        "INVIGILATOR_SECRET_KEY": SECRET,
        "INVIGILATOR_ADMIN_KEYS": STAFF_KEY,
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "invigilator", "serve", "--port", str(port), "--no-demo",
         "--database-url", db_url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", serve)
        script = walkthrough()
        assert "BASE=http://127.0.0.1:8000;" in script
        script = script.replace("BASE=http://127.0.0.1:8000;", f"BASE=http://127.0.0.1:{port};")
        # each answer on a line of its own, so that it can be read back
        script = 'curl() { command curl "$@"; echo; }\n' + script
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env={**os.environ, "STAFF_KEY": STAFF_KEY},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        stop(serve)
    assert done.returncode == 0, done.stderr
    state, beat, saved, completed, timeline, late = (
        json.loads(line) for line in done.stdout.splitlines() if line.strip()
    )
    assert state["status"] == "active" and state["candidate_id"] == "alice"
    assert beat["next_heartbeat_seconds"] == 15.0
    assert saved["committed"] and saved["applied"] == ["q1"] and saved["superseded"] == []
    assert completed["status"] == "completed" and completed["completion_method"] == "manual"
    assert completed["pending_answers"] == {"q1": "42"} and not completed["already_ended"]
    assert [e["type"] for e in timeline["events"]] == ["started", "answers_saved", "completed"]
    assert late["status"] == 409 and late["code"] == "session_ended"
