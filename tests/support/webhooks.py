"""Webhook test helpers: a real HTTP receiver on loopback, the README's verification snippet,
and a delivery worker running in the background with test-sized timings."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from invigilator.domain import Policy
from invigilator.webhooks.outbox import WebhookStore
from invigilator.webhooks.vault import SecretBox
from invigilator.webhooks.worker import DeliveryWorker
from support.api import Api, in_process_api, make_settings

REPO = Path(__file__).resolve().parents[2]
#: A spec-valid secret (standard base64 of 32 bytes), fixed so failures are reproducible.
SECRET = "whsec_" + base64.b64encode(b"invigilator-test-webhook-secret!").decode()
#: What an app made with make_settings() encrypts endpoint secrets with.
BOX = SecretBox.from_settings(make_settings())

#: What the receiver does with a request: an HTTP status, or ("hang", seconds) then 200.
Action = int | tuple[str, float]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it hung up / timed the sender out)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 in a thread. `respond(request) -> Action` decides each
    answer (default 200). `stop()` makes it unreachable; `start()` brings it back on the same
    port. Records every request, and processes each event `id` once (dedupe)."""

    respond: Callable[[Received], Action] = lambda _: 200
    requests: list[Received] = field(default_factory=list)
    processed: dict[str, Received] = field(default_factory=dict)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                got = Received(dict(self.headers.items()), self.rfile.read(length), 0)
                action = receiver.respond(got)
                if isinstance(action, tuple):
                    time.sleep(action[1])
                    action = 200
                got.status = action
                with receiver._lock:
                    receiver.requests.append(got)
                    if 200 <= action < 300:
                        receiver.processed.setdefault(got.json["id"], got)
                with contextlib.suppress(OSError):
                    self.send_response(action)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def types(self) -> list[str]:
        with self._lock:
            return [r.json["type"] for r in self.requests]


def readme_verify() -> Callable[..., Any]:
    """The README's receiver snippet (its Webhooks section), executed as written: verify(secret,
    body, headers) -> the event, or None."""
    readme = (REPO / "README.md").read_text("utf-8")
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len([line for line in code.splitlines() if line.strip()]) <= 6, code
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md#webhooks", "exec"), namespace)
    verify: Callable[..., Any] = namespace["verify"]
    return verify


FAST = {
    "timeout": 2.0,
    "poll_interval": 0.05,
    "silent_scan_interval": 0.2,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
}


def make_worker(pool: AsyncConnectionPool[Any], policy: Policy, **overrides: Any) -> DeliveryWorker:
    settings = make_settings()
    return DeliveryWorker.from_settings(
        pool, settings, **{"policy": policy, "box": BOX, **FAST, **overrides}
    )


def outbox(pool: AsyncConnectionPool[Any]) -> WebhookStore:
    return WebhookStore(pool, BOX)


@contextlib.asynccontextmanager
async def running(worker: DeliveryWorker) -> AsyncIterator[DeliveryWorker]:
    """The worker's loop in a task until the block ends (then stopped as serve stops it)."""
    await worker.sync()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def serving(db_url: str, **overrides: Any) -> AsyncIterator[Api]:
    """The whole app in-process (lifespan included: the worker runs), driven through httpx."""
    values = {
        "webhook_poll_interval_seconds": 0.05,
        "webhook_backoff_base_seconds": 0.05,
        "webhook_backoff_max_seconds": 0.2,
        "webhook_timeout_seconds": 2.0,
        **overrides,
    }
    async with in_process_api(db_url, make_settings(**values)) as api:
        yield api
