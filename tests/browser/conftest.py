"""Browser tests: a real server (uvicorn in a thread, on a cloned test database) and Debian's
headless Chromium driven by Playwright.

Playwright's own browser download cannot work offline, so it launches Debian's Chromium:
`$INVIGILATOR_CHROMIUM`, else `chromium-headless-shell` on the PATH (`./scripts/test` installs
it), else `chromium`. The headless shell is the same Blink and V8 without the desktop browser
around them, as Playwright's own headless Chromium is: the browser tests took 58 s of CPU with
it against 82 s with `chromium` (26 tests, one process, same run), and pass with either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from psycopg.rows import dict_row
from pydantic import SecretStr

from invigilator.api.app import create_app
from invigilator.config import Settings
from support.db import ANSWERS
from support.waiting import wait_until

#: A page's assertions wait up to 15 s (Playwright's default is 5): on a loaded 2-core machine a
#: dashboard refresh or a bulk reply can take longer than 5 s, and a passing wait costs nothing.
expect.set_options(timeout=15_000)

STAFF_KEY = "browser-tests-staff-key-0123456789"
SECRET = "browser-tests-secret-key-0123456789abcdef"
#: Heartbeats every 2 s in these tests (the server tells the client), so waits stay short.
HEARTBEAT_SECONDS = 2.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # Chromium refuses to run as root without it
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class LiveServer:
    """A running Invigilator (demo on) and a way to look at its database."""

    base_url: str
    db_url: str

    def url(self, path: str) -> str:
        return self.base_url + path

    def session_row(self, candidate_id: str) -> dict[str, Any] | None:
        with psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(
                # every committed answer, from its rows (pending_answers mirrors them)
                f"SELECT *, {ANSWERS} AS pending_answers FROM test_session WHERE candidate_id = %s",
                (candidate_id,),
            ).fetchone()

    def event_types(self, candidate_id: str) -> list[str]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT type FROM test_session_event WHERE candidate_id = %s ORDER BY at, id",
                (candidate_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(statement, params)  # type: ignore[arg-type]

    def staff(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            self.base_url + path,
            headers={"Authorization": f"Bearer {STAFF_KEY}"},
            timeout=10,
            **kwargs,
        )


def browser_settings() -> Settings:
    return Settings(
        secret_key=SecretStr(SECRET),
        admin_keys=[SecretStr(STAFF_KEY)],
        sweeper_enabled=False,  # lazy expiry ends sessions; no sweeper thread in these tests
        demo=True,
        heartbeat_interval_seconds=HEARTBEAT_SECONDS,
        pool_min_size=1,
        pool_max_size=4,
    )


@contextlib.contextmanager
def serving(db_url: str, settings: Settings) -> Iterator[LiveServer]:
    """uvicorn serving `create_app` on 127.0.0.1 and a free port, in a background thread."""
    app = create_app(settings, database_url=db_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start", within=15)
        assert server.started, "the server did not start"
        yield LiveServer(f"http://127.0.0.1:{port}", db_url)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live_server(db_url: str) -> Iterator[LiveServer]:
    with serving(db_url, browser_settings()) as server:
        yield server


def chromium_path() -> str:
    path = (
        os.environ.get("INVIGILATOR_CHROMIUM")
        or shutil.which("chromium-headless-shell")
        or shutil.which("chromium")
    )
    if not path:
        pytest.skip("no chromium: install Debian's chromium-headless-shell (./scripts/test does)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (each test gets its own context)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            with contextlib.suppress(Exception):
                launched.close()


@pytest.fixture
def context(browser: Browser, live_server: LiveServer) -> Iterator[BrowserContext]:
    """A fresh browser profile (empty storage) with a laptop-sized window. It depends on
    `live_server` so that it closes first: the server then stops with no browser attached."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        with contextlib.suppress(Exception):
            ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
