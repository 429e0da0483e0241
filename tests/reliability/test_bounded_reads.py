"""Bounded reads (issue 16): a request whose headers or body do not arrive in time is answered
408 and its connection closed, while the server goes on serving everybody else. Against a
real uvicorn (with httptools, as `invigilator serve` runs it) over TCP, with 1 s limits."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from faults import ApiProcess, report

from invigilator.api.server import IMPORT_PATH
from support.api import STAFF_KEY

LIMIT = 1.0  # seconds, for headers and for bodies
PATIENCE = 15.0  # far more than LIMIT: how long a test waits before calling it a hang


class BoundedApi(ApiProcess):
    """ApiProcess, served with the protocol `invigilator serve` uses."""

    extra_args = ("--http", IMPORT_PATH)


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[BoundedApi]:
    api = BoundedApi(
        db_url,
        tmp_path / "api.log",
        INVIGILATOR_READ_HEADERS_TIMEOUT_SECONDS=str(LIMIT),
        INVIGILATOR_READ_BODY_TIMEOUT_SECONDS=str(LIMIT),
        INVIGILATOR_RATE_LIMIT_CANDIDATE_PER_MINUTE="0",
        INVIGILATOR_RATE_LIMIT_IP_PER_MINUTE="0",
    )
    api.start()
    try:
        yield api
    finally:
        api.stop()


def connect(api: ApiProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=PATIENCE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


class Others(threading.Thread):
    """Other clients, served while a slow one holds its connection: how many requests got an
    answer, and the slowest answer."""

    def __init__(self, api: ApiProcess, token: str, candidate_id: str) -> None:
        super().__init__(daemon=True)
        self.api, self.token, self.candidate_id = api, token, candidate_id
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0
        self.slowest = 0.0

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api.base_url, timeout=PATIENCE) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                response = client.post(
                    f"/api/v1/sessions/{self.candidate_id}/heartbeat",
                    json={"active": True},
                    headers=headers,
                )
                self.slowest = max(self.slowest, time.monotonic() - started)
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                time.sleep(0.02)


def start_session(api: ApiProcess, candidate_id: str) -> str:
    response = httpx.post(
        f"{api.base_url}/api/v1/sessions",
        json={"candidate_id": candidate_id, "create_candidate": True},
        headers={"Authorization": f"Bearer {STAFF_KEY}"},
        timeout=PATIENCE,
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def test_slow_headers_are_cut_off_and_others_are_served(server: BoundedApi) -> None:
    token = start_session(server, "reader-1")
    others = Others(server, token, "reader-1")
    others.start()
    try:
        # Slow loris: a header line every 0.2 s, never the blank line that ends them.
        loris = connect(server)
        idle = connect(server)  # connects, and never sends a byte
        started = time.monotonic()
        loris.sendall(b"POST /api/v1/sessions/reader-1/heartbeat HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        loris.settimeout(0.2)
        for i in range(int(PATIENCE / 0.2)):
            try:
                loris.sendall(f"X-Slow-{i}: {'y' * 10}\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = loris.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed while we kept writing: the 408 may be lost
                break
            answer += chunk
            if not chunk:
                break
        loris_held = time.monotonic() - started
        idle.settimeout(PATIENCE)
        idle_answer = read_until_closed(idle)
        idle_held = time.monotonic() - started
    finally:
        others.stop.set()
        others.join(timeout=PATIENCE)
    # A client still writing may see the close as a reset before it reads the 408.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert idle_answer.startswith(b"HTTP/1.1 408"), idle_answer[:200]
    assert b"application/problem+json" in idle_answer and b'"request_timeout"' in idle_answer
    assert b"x-content-type-options: nosniff" in idle_answer.lower()
    # 0.9: the server starts its timer a moment before the client starts its clock
    assert LIMIT * 0.9 <= loris_held < PATIENCE and LIMIT * 0.9 <= idle_held < PATIENCE
    assert others.ok > 0 and others.failed == 0
    report(
        "slow_headers",
        limit_s=LIMIT,
        loris_held_s=round(loris_held, 2),
        idle_held_s=round(idle_held, 2),
        others_served=others.ok,
        others_slowest_s=round(others.slowest, 3),
    )


@pytest.mark.parametrize("path", ["heartbeat", "answers"], ids=["fast_path", "route"])
def test_a_stalled_body_gets_408_and_others_are_served(server: BoundedApi, path: str) -> None:
    token = start_session(server, "reader-2")
    start_session(server, "reader-3")
    others = Others(server, start_session(server, "reader-4"), "reader-4")
    others.start()
    method = "POST" if path == "heartbeat" else "PATCH"
    body = b'{"answers": {"q1": "x"}, "seq": 1}' if path == "answers" else b'{"active": true}'
    try:
        stalled = connect(server)
        started = time.monotonic()
        stalled.sendall(
            f"{method} /api/v1/sessions/reader-2/{path} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"X-Request-ID: stalled-body\r\nContent-Length: {len(body) + 50}\r\n\r\n".encode()
            + body  # 50 bytes short, and nothing more comes
        )
        answer = read_until_closed(stalled)
        held = time.monotonic() - started
    finally:
        others.stop.set()
        others.join(timeout=PATIENCE)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    problem = json.loads(payload)
    assert problem["code"] == "request_timeout" and problem["status"] == 408
    lowered = head.lower()
    assert b"content-type: application/problem+json" in lowered
    assert b"x-request-id: stalled-body" in lowered
    assert b"x-content-type-options: nosniff" in lowered
    assert LIMIT <= held < PATIENCE
    assert others.ok > 0 and others.failed == 0
    # Nothing was written for the stalled request.
    state = httpx.get(
        f"{server.base_url}/api/v1/sessions/reader-2/state",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert state["pending_answers"] == {} and state["last_heartbeat"] is None
    report(
        f"stalled_body_{path}",
        limit_s=LIMIT,
        held_s=round(held, 2),
        others_served=others.ok,
        others_slowest_s=round(others.slowest, 3),
    )


def test_a_slow_body_that_arrives_in_time_is_taken(server: BoundedApi) -> None:
    token = start_session(server, "reader-5")
    body = json.dumps({"answers": {"q1": "slow but steady"}, "seq": 1}).encode()
    sock = connect(server)
    sock.sendall(
        b"PATCH /api/v1/sessions/reader-5/answers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    for i in range(0, len(body), len(body) // 3 + 1):
        sock.sendall(body[i : i + len(body) // 3 + 1])
        time.sleep(LIMIT / 10)
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
