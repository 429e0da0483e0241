"""`GET /metrics` (Prometheus text) and who may scrape it.

Staff keys or INVIGILATOR_METRICS_KEY as a bearer token, or no key with
INVIGILATOR_METRICS_PUBLIC=true; or on its own listener (INVIGILATOR_METRICS_PORT,
INVIGILATOR_METRICS_HOST) instead of the API's port. What it serves is recorded by
api/observability.py and defined in invigilator/metrics.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from invigilator import metrics
from invigilator.api.observability import PoolSampler
from invigilator.api.problems import ApiError
from invigilator.api.tokens import bearer
from invigilator.config import Settings
from invigilator.domain import InvigilatorError
from invigilator.webhooks.outbox import WebhookStore

log = logging.getLogger(__name__)


async def scrape(app: FastAPI, sampler: PoolSampler) -> tuple[bytes, str]:
    """Refresh the scrape-time gauges (two cheap counts, the pool) and render everything."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None:
        sampler(force=True)
        try:
            active, pending = await WebhookStore(runtime.pool).scrape_counts()
        except InvigilatorError as exc:  # keep the last values; the scrape itself still works
            log.warning("metrics: %s", exc.message)
        else:
            metrics.ACTIVE_SESSIONS.set(active)
            metrics.WEBHOOK_PENDING.set(pending)
    return metrics.render()


def _authorized(presented: str | None, settings: Settings, staff_keys: list[bytes]) -> bool:
    if settings.metrics_public:
        return True
    if not presented:
        return False
    given = presented.encode()
    keys = list(staff_keys)
    if settings.metrics_key is not None:
        keys.append(settings.metrics_key.get_secret_value().encode())
    ok = False
    for key in keys:  # constant time, no early exit
        ok |= hmac.compare_digest(given, key)
    return ok


class MetricsListener:
    """`GET /metrics` on its own port (INVIGILATOR_METRICS_PORT): a minimal HTTP/1.0 server on
    the app's event loop. SO_REUSEPORT lets every worker process listen on the same port."""

    def __init__(self, app: FastAPI, settings: Settings, sampler: PoolSampler) -> None:
        self.app = app
        self.settings = settings
        self.sampler = sampler
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        assert self.settings.metrics_port is not None
        self.server = await asyncio.start_server(
            self._handle,
            self.settings.metrics_host,
            self.settings.metrics_port,
            reuse_port=hasattr(socket, "SO_REUSEPORT"),
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, *_ = lines[0].split(" ")
            # As an ASGI server would hand them over, so that one parser reads the token.
            headers = [
                (k.strip().lower().encode("latin-1"), v.strip().encode("latin-1"))
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            ]
            needs_key = self.settings.metrics_key is not None and not self.settings.metrics_public
            if method != "GET" or target.split("?")[0] != "/metrics":
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            elif needs_key and not _authorized(bearer(headers), self.settings, []):
                status, body, ctype = "401 Unauthorized", b"a key is required\n", "text/plain"
            else:
                body, ctype = await scrape(self.app, self.sampler)
                status = "200 OK"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def install(app: FastAPI, settings: Settings, sampler: PoolSampler) -> None:
    """Add `/metrics` (or its own listener) to an app from `create_app`."""
    if not settings.metrics_enabled:
        return
    if settings.metrics_port is None:

        async def metrics_endpoint(request: Request) -> Response:
            runtime = request.app.state.runtime
            presented = bearer(request.scope["headers"])
            if not _authorized(presented, settings, runtime.admin_keys):
                raise ApiError("unauthorized", "a staff or metrics key is required (Bearer)")
            body, content_type = await scrape(request.app, sampler)
            return Response(body, media_type=content_type)

        app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            listener = None
            if settings.metrics_port is not None:
                listener = MetricsListener(app, settings, sampler)
                await listener.start()
            try:
                yield state
            finally:
                if listener is not None:
                    await listener.close()
                metrics.mark_process_dead()

    app.router.lifespan_context = lifespan
