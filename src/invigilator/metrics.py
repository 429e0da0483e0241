"""Prometheus metrics: every metric the service exports, in one place, for any module to import.

    from invigilator import metrics
    metrics.observe_sweep(committed, failed=False)       # the sweeper, after each pass

Names (all prefixed `invigilator_`):

| metric | type | labels |
|---|---|---|
| http_requests_total | counter | method, route (the template), status |
| http_request_duration_seconds | histogram | method, route |
| http_requests_in_progress | gauge | |
| heartbeats_total | counter | |
| active_sessions | gauge (a query at scrape time) | |
| sweeper_passes_total | counter | |
| sweeper_failures_total | counter | |
| sweeper_sessions_finalized_total | counter | method |
| webhook_deliveries_total | counter | type |
| webhook_failures_total | counter | reason (`http_<status>`, `timeout`, `connection`) |
| webhook_given_up_total | counter | type |
| webhook_silent_events_total | counter | |
| webhook_delivery_duration_seconds | histogram | |
| webhook_pending | gauge (a query at scrape time) | |
| db_pool_size, db_pool_available, db_pool_max, db_pool_requests_waiting | gauge | |

Several worker processes (`invigilator serve --workers N`): serve points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start, so every worker's
counters add up in whichever worker answers the scrape (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from invigilator.domain import Ended

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "invigilator_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "invigilator_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_PROGRESS = Gauge(
    "invigilator_http_requests_in_progress",
    "HTTP requests being answered now.",
    multiprocess_mode="livesum",
)
HEARTBEATS = Counter("invigilator_heartbeats_total", "Heartbeats accepted (rate() for per second).")
ACTIVE_SESSIONS = Gauge(
    "invigilator_active_sessions",
    "Sessions active with time left (a query at scrape time).",
    multiprocess_mode="mostrecent",
)

SWEEPER_PASSES = Counter("invigilator_sweeper_passes_total", "Sweeper passes run.")
SWEEPER_FAILURES = Counter(
    "invigilator_sweeper_failures_total", "Sweeper passes that failed (database unavailable…)."
)
SWEEPER_FINALIZED = Counter(
    "invigilator_sweeper_sessions_finalized_total",
    "Sessions the sweeper ended, by completion method.",
    ["method"],
)

WEBHOOK_DELIVERED = Counter(
    "invigilator_webhook_deliveries_total", "Webhook deliveries a receiver accepted.", ["type"]
)
WEBHOOK_FAILURES = Counter(
    "invigilator_webhook_failures_total",
    "Webhook attempts that failed (each is retried until the delivery gives up).",
    ["reason"],
)
WEBHOOK_GIVEN_UP = Counter(
    "invigilator_webhook_given_up_total", "Webhook deliveries given up (status failed).", ["type"]
)
WEBHOOK_SILENT = Counter(
    "invigilator_webhook_silent_events_total", "session.silent deliveries produced."
)
WEBHOOK_LATENCY = Histogram(
    "invigilator_webhook_delivery_duration_seconds",
    "Time a receiver took to answer a webhook attempt.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_PENDING = Gauge(
    "invigilator_webhook_pending",
    "Webhook deliveries waiting to be sent (a query at scrape time).",
    multiprocess_mode="mostrecent",
)

DB_POOL_SIZE = Gauge(
    "invigilator_db_pool_size", "Connections the pool holds.", multiprocess_mode="livesum"
)
DB_POOL_AVAILABLE = Gauge(
    "invigilator_db_pool_available", "Idle connections in the pool.", multiprocess_mode="livesum"
)
DB_POOL_MAX = Gauge(
    "invigilator_db_pool_max", "The pool's maximum size.", multiprocess_mode="livesum"
)
DB_POOL_WAITING = Gauge(
    "invigilator_db_pool_requests_waiting",
    "Requests waiting for a connection.",
    multiprocess_mode="livesum",
)


def observe_sweep(ended: Iterable[Ended], *, failed: bool = False) -> None:
    """Count one sweeper pass and what it finalized (call once per pass)."""
    SWEEPER_PASSES.inc()
    if failed:
        SWEEPER_FAILURES.inc()
    for e in ended:
        SWEEPER_FINALIZED.labels(method=e.completion_method.value).inc()


def observe_pool(stats: dict[str, Any]) -> None:
    """Set the pool gauges from psycopg_pool's `get_stats()`."""
    DB_POOL_SIZE.set(stats.get("pool_size", 0))
    DB_POOL_AVAILABLE.set(stats.get("pool_available", 0))
    DB_POOL_MAX.set(stats.get("pool_max", 0))
    DB_POOL_WAITING.set(stats.get("requests_waiting", 0))


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def prepare_multiprocess(workers: int) -> None:
    """Before starting `workers` > 1 processes: a fresh PROMETHEUS_MULTIPROC_DIR (unless one is
    set), inherited by the workers, removed when this process exits."""
    if workers <= 1 or multiprocess_enabled():
        return
    directory = tempfile.mkdtemp(prefix="invigilator-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    atexit.register(shutil.rmtree, directory, True)


def mark_process_dead() -> None:
    """A worker is exiting: drop its live gauges from the sums (multiprocess mode)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def render() -> tuple[bytes, str]:
    """The exposition text and its content type (all workers' in multiprocess mode)."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
