"""What every request leaves behind: a request id, one access log line, request metrics.

- Every response carries `X-Request-ID`: the caller's own when it is sane (1-128 characters
  of `A-Za-z0-9._:-`), a new one otherwise. Log records written while the request runs carry
  it (`invigilator.logs.REQUEST_ID`).
- One log line per request (logger `invigilator.access`): method, route template, status,
  duration in ms, request id. Never a path with its ids, a query string, a header or a body, so
  no token, password or answer reaches the logs.
- Request counters and latency histograms by route template; the pool gauges, sampled.

`GET /metrics`, which serves them, is api/metrics_endpoint.py; logging itself is configured in
invigilator/logs.py.
"""

from __future__ import annotations

import logging
import os
import re
import time
import weakref
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from invigilator import metrics
from invigilator.logs import REQUEST_ID

access_log = logging.getLogger("invigilator.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"
#: Where a request's id is kept on its scope once chosen (the fast path chooses it first when
#: it may hand the request over), so the whole request has one id.
REQUEST_ID_SCOPE = "invigilator.request_id"
#: Starlette's plain routes (FastAPI's /docs, /redoc, /openapi.json, /docs/oauth2-redirect)
#: put only their endpoint in the scope, not themselves: their path, by endpoint.
_PLAIN_ROUTE_PATHS: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()


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
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        try:
            return _PLAIN_ROUTE_PATHS[endpoint]
        except (KeyError, TypeError):  # TypeError: an endpoint that takes no weak reference
            pass
        mounted = str(scope.get("root_path", ""))[len(str(scope.get("app_root_path", ""))) :]
        if mounted:  # a mounted app (/static): its mount point
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


class PoolSampler:
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


def install(app: FastAPI) -> PoolSampler:
    """Add the middleware to an app from `create_app`; the pool sampler it calls, for the
    heartbeat fast path and GET /metrics."""
    for route in app.router.routes:
        if isinstance(route, Route):
            _PLAIN_ROUTE_PATHS[route.endpoint] = route.path
    sampler = PoolSampler(app)
    app.state.pool_sampler = sampler  # the heartbeat fast path calls it too
    app.add_middleware(ObservabilityMiddleware, on_response=sampler)
    return sampler
