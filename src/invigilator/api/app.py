"""The FastAPI app factory. One app per process; the pools, the service and the optional
in-process sweeper and webhook worker live for the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from invigilator import __version__
from invigilator.api import docs, metrics_endpoint, observability, problems
from invigilator.api.fastpath import HeartbeatFastPath, InvigilatorAPI
from invigilator.api.headers import SecurityHeaders
from invigilator.api.limits import BodySizeLimit
from invigilator.api.ratelimit import RateLimit, RateLimits
from invigilator.api.routes import admin, candidate, health, operation_id, staff
from invigilator.api.routes import analytics as analytics_routes
from invigilator.api.routes import webhooks as webhooks_routes
from invigilator.api.runtime import Runtime
from invigilator.config import Settings
from invigilator.db import connector
from invigilator.db.url import URL_LOGGERS, ScrubPasswords
from invigilator.domain import ConfigurationError
from invigilator.heartbeats import HeartbeatBatcher
from invigilator.logs import configure_logging
from invigilator.service import Sessions
from invigilator.store import SessionStore
from invigilator.webhooks import worker as webhooks

log = logging.getLogger(__name__)


# Every app adds the same route objects, each built once when its module was imported.
# FastAPI's include_router would resolve each route again (its dependants and validators) for
# every app: ~160 ms of CPU per app, which every in-process test pays.
ROUTES: list[BaseRoute] = [
    route
    for module in (health, analytics_routes, admin, staff, candidate, webhooks_routes)
    for route in module.router.routes
]


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> FastAPI:
    """Build the app. `database_url` overrides the settings' (serve passes the embedded one)."""
    settings = settings or Settings()
    url = database_url or (
        settings.database_url.get_secret_value() if settings.database_url else None
    )
    if not url:
        raise ConfigurationError(
            "no database: set DATABASE_URL (invigilator serve starts one for you)"
        )
    if settings.secret_key is None or not settings.admin_keys:
        raise ConfigurationError("INVIGILATOR_SECRET_KEY and INVIGILATOR_ADMIN_KEYS must be set")
    settings.check()  # e.g. INVIGILATOR_WEBHOOK_URL needs its secret

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Whatever started is stopped in reverse order, also when a later start fails.
        async with contextlib.AsyncExitStack() as running:
            scrubbing = ScrubPasswords(url)
            for name in URL_LOGGERS:
                logging.getLogger(name).addFilter(scrubbing)
                running.callback(logging.getLogger(name).removeFilter, scrubbing)
            pool = connector.pool_for(url, settings)
            await pool.open(wait=False)
            running.push_async_callback(pool.close)
            heartbeat_pool = connector.heartbeat_pool_for(url, settings)
            await heartbeat_pool.open(wait=False)
            running.push_async_callback(heartbeat_pool.close)
            store = SessionStore(pool, settings.policy(), heartbeat_pool=heartbeat_pool)
            heartbeats = HeartbeatBatcher(store, linger=settings.heartbeat_linger_ms / 1000)
            running.push_async_callback(heartbeats.close)  # queued heartbeats are written
            sessions = Sessions(store, settings.limits(), heartbeats)
            app.state.runtime = Runtime(
                settings=settings,
                sessions=sessions,
                secret_key=settings.secret_key.get_secret_value(),  # type: ignore[union-attr]
                admin_keys=[k.get_secret_value().encode() for k in settings.admin_keys],
                pool=pool,
            )
            stop = asyncio.Event()
            if settings.sweeper_enabled:
                from invigilator.sweeper import Sweeper

                sweeper = Sweeper(
                    sessions,
                    interval=settings.sweep_interval_seconds,
                    batch_size=settings.sweep_batch_size,
                    retention=settings.retention(),
                )
                running.push_async_callback(
                    _finish, asyncio.create_task(sweeper.run(stop), name="sweeper"), stop
                )
            # Webhook deliveries (invigilator.webhooks); None when the worker is disabled.
            webhook_task = await webhooks.start(settings, pool, stop)
            if webhook_task is not None:  # stops between deliveries: POSTs in flight finish
                running.push_async_callback(_finish, webhook_task, stop)
            yield

    app = InvigilatorAPI(
        title="Invigilator",
        version=__version__,
        summary="Server-authoritative timers, heartbeats and resumable answers for online tests.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # served from this server's own assets (api/docs.py), not a CDN
        redoc_url=None,
        # FastAPI's native OpenTelemetry costs ~35 µs a request when no provider is set up;
        # Prometheus metrics (/metrics) are built in. INVIGILATOR_OTEL=true turns it on.
        telemetry={"tracing": settings.otel, "metrics": settings.otel, "logs": settings.otel},
    )
    problems.install(app)
    docs.install(app)
    app.router.routes.extend(ROUTES)

    if settings.demo:
        from invigilator.api.routes import demo

        app.router.routes.extend(demo.router.routes)

    static_dir = resources.files("invigilator").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    limits = RateLimits(settings)
    cors: dict[str, Any] | None = (
        {
            "allow_origins": settings.cors_origins,
            "allow_methods": ["GET", "POST", "PATCH", "DELETE"],
            "allow_headers": ["Authorization", "Content-Type"],
        }
        if settings.cors_origins
        else None
    )
    # In front of everything: ordinary heartbeats are answered in one pass (api/fastpath.py)
    # that applies the same limits, headers, CORS, logs and metrics as the chain below. With
    # INVIGILATOR_OTEL, every request goes through FastAPI's instrumentation instead.
    if not settings.otel:
        app.heartbeat_fast_path = HeartbeatFastPath(
            app, limits, CORSMiddleware(app, **cors) if cors else None
        )
    # Innermost first. Every answer, the 413, 429 and 500 ones included, passes the CORS,
    # security-header and request-id middleware on its way out.
    app.add_middleware(problems.ErrorBoundary)
    app.add_middleware(RateLimit, limits=limits)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        body_timeout=settings.read_body_timeout_seconds,
    )
    if cors:
        app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(SecurityHeaders)
    # Outermost: request ids, access log, metrics (api/observability.py); then GET /metrics.
    sampler = observability.install(app)
    metrics_endpoint.install(app, settings, sampler)
    return app


async def _finish(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    # Told to stop before it is awaited, also when a part started after it failed to start
    # (awaiting a task nobody told to stop would hang the app's start-up forever).
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def app_factory() -> FastAPI:
    """For `uvicorn --factory invigilator.api.app:app_factory` (settings from the environment)."""
    settings = Settings()
    configure_logging(settings)  # each worker process logs like `serve` does
    return create_app(settings)
